"""When do the labeling loop's stopping signals fire on a simulated oracle, and how much accuracy
is left on the table there?

Drives ``alfm label next`` / ``import`` (the library functions) for ``--rounds`` rounds with the
store's own train labels as the oracle, reads after each round the classifier's accuracy on the
store's test split and the stopping signals of ``alfm label status``, and prints, per signal, the
round it fires at, the labels spent and the accuracy gap to the last round.

    python bench/labeling_stopping.py \
        --features results/features/mobilenet_v2/animal_mnist@112px.zarr \
        --budget 10 --rounds 20 --seeds 1 10 100
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from alfm.labeling import (
    Entry,
    LabelingProject,
    import_labels,
    init_project,
    next_batch,
    project_status,
)
from alfm.store import open_store


def simulate(features: str, budget: int, rounds: int, seed: int, folder: Path) -> dict:
    """One simulated project: accuracy per round and the final stopping signals."""
    store = open_store(features)
    train = store.load("train")
    names = store.attrs["class_names"]
    oracle = {i: names[y] for i, y in zip(train.ids, train.labels, strict=True)}
    init_project(features, folder, seed=seed, device="cpu")
    accuracy, labeled = {}, {}
    for _ in range(rounds):
        project = LabelingProject(folder)
        batch = next_batch(project, budget).batch
        entries = [Entry(f"row {k}", i, oracle[i]) for k, i in enumerate(batch.ids)]
        import_labels(project, entries, "oracle")
        status = project_status(LabelingProject(folder))
        accuracy[batch.round], labeled[batch.round] = status["accuracy"], status["labeled"]
    fired = {}
    for name, signal in status["stopping"].items():
        at = signal["fires_at"]
        fired[name] = None if at is None else {
            "round": at,
            "labels": labeled[at],
            "accuracy": accuracy[at],
            "gap": accuracy[rounds] - accuracy[at],
        }  # fmt: skip
    values = {name: signal["values"] for name, signal in status["stopping"].items()}
    return {
        "seed": seed,
        "accuracy": accuracy,
        "labeled": labeled,
        "fired": fired,
        "values": values,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True)
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            result = simulate(args.features, args.budget, args.rounds, seed, Path(tmp) / "p")
        last = args.rounds
        print(
            f"budget {args.budget}/round, seed {seed}: accuracy at round {last} "
            f"({result['labeled'][last]} labels) {result['accuracy'][last]:.4f}"
        )
        for name, fired in result["fired"].items():
            if fired is None:
                print(f"  {name}: does not fire within {last} rounds")
            else:
                print(
                    f"  {name}: fires at round {fired['round']} ({fired['labels']} labels), "
                    f"accuracy {fired['accuracy']:.4f}, gap to round {last} {fired['gap']:+.4f}"
                )
        print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
