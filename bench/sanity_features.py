"""Sanity check of a feature store: logistic regression on its features vs on raw pixels.

    python bench/sanity_features.py [--store results/features/mobilenet_v2/animal_mnist@112px.zarr]

Trains scikit-learn's LogisticRegression (standardized inputs, L2, lbfgs) on the store's train
split and reports test accuracy, next to the same classifier on the raw pixels of the embedded
dataset the store was made from (animal_mnist, mnist5k or digits).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from alfm.datasets import create_dataset
from alfm.store import open_store


def test_accuracy(x_train, y_train, x_test, y_test, max_iter: int) -> tuple[float, float]:
    """(test accuracy, fit seconds) of a standardized logistic regression."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    start = time.perf_counter()
    model.fit(x_train, y_train)
    return float(model.score(x_test, y_test)), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="results/features/mobilenet_v2/animal_mnist@112px.zarr")
    parser.add_argument("--max-iter", type=int, default=1000)
    args = parser.parse_args()
    store = open_store(args.store)
    dataset = create_dataset(store.attrs["dataset"])
    rows = []
    splits = {s: (store.load(s), dataset.split(s)) for s in ("train", "test")}
    for split, (features, images) in splits.items():
        if list(features.ids) != list(images.ids):
            raise ValueError(f"store {args.store} {split} rows do not match the dataset's ids")
    (train, train_images), (test, test_images) = splits["train"], splits["test"]
    acc, sec = test_accuracy(
        train.features.astype(np.float32),
        train.labels,
        test.features.astype(np.float32),
        test.labels,
        args.max_iter,
    )
    rows.append(
        {
            "input": f"{store.attrs['backbone']} features",
            "dim": train.features.shape[1],
            "test_accuracy": round(acc, 4),
            "fit_seconds": round(sec, 1),
        }
    )
    pixels = [
        d.images.reshape(len(d), -1).astype(np.float32) / 255 for d in (train_images, test_images)
    ]
    acc, sec = test_accuracy(pixels[0], train.labels, pixels[1], test.labels, args.max_iter)
    rows.append(
        {
            "input": "raw pixels",
            "dim": pixels[0].shape[1],
            "test_accuracy": round(acc, 4),
            "fit_seconds": round(sec, 1),
        }
    )
    print(
        f"{store.attrs['dataset']}: train {len(train.labels)}, test {len(test.labels)}, "
        f"preprocessing {json.dumps(store.attrs['preprocessing'])}"
    )
    print("| input | dim | test accuracy | fit s |\n|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['input']} | {row['dim']} | {row['test_accuracy']:.4f} | {row['fit_seconds']} |"
        )


if __name__ == "__main__":
    main()
