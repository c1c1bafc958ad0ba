"""The ``alfm`` command line: thin wrappers over the library functions the workflow also calls."""

from __future__ import annotations

import argparse
import json
import sys

from alfm.budget import BudgetConfig
from alfm.config import DEVICES, add_arguments, parsed_arguments


def add_extract(sub: argparse._SubParsersAction) -> None:
    """``alfm extract``: build (or resume) the feature store of one model on one dataset, or one
    shard of it (``--shard i/N``), or finalize a sharded store (``--finalize``)."""
    parser = sub.add_parser(
        "extract",
        help="extract features of a model on a dataset",
        description="Extract (or resume) a feature store. Sharded: run --shard i/N for i = 0 .. "
        "N-1 (at once, anywhere the store's folder is shared), then --finalize.",
    )
    parser.add_argument("--model", default="mobilenet_v2", help="backbone name (alfm list models)")
    parser.add_argument("--dataset", default="animal_mnist", help="dataset (alfm list datasets)")
    parser.add_argument("--root", help="local files of the dataset, where it needs them")
    parser.add_argument("--out", help="store path (default results/features/MODEL/DATASET.zarr)")
    parser.add_argument("--model-dir", help="weights folder (default $ALFM_MODEL_DIR)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: cores - 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--image-size", type=int, help="input resolution (default: the model's)")
    parser.add_argument("--random-init", action="store_true", help="random weights (benchmarks)")
    parser.add_argument(
        "--skip-bad-images", action="store_true", help="skip and record unreadable images"
    )
    parser.add_argument(
        "--decode",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="JPEG decoding: gpu = on the extraction device (nvJPEG), cpu = PIL in the "
        "workers, auto = gpu on CUDA (default)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (compile time apart)"
    )
    parser.add_argument(
        "--shard", metavar="I/N", help="extract only shard I of N (0-based); then --finalize"
    )
    parser.add_argument(
        "--finalize",
        action="store_true",
        help="check every chunk of a sharded store and mark it complete (extracts nothing)",
    )
    parser.add_argument(
        "--shards", type=int, help="with --finalize: the shard count, to name missing shards"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handler(args: argparse.Namespace) -> int:
        from alfm.extract import default_store_path, extract_features, finalize_store
        from alfm.store import IncompleteStoreError, Shard, open_store

        try:
            if args.finalize:
                path = finalize_store(
                    args.out or default_store_path(args.model, args.dataset), args.shards
                )
            else:
                path = extract_features(
                    args.model,
                    args.dataset,
                    args.out,
                    root=args.root,
                    model_dir=args.model_dir,
                    batch_size=args.batch_size,
                    num_workers=args.workers,
                    device=args.device,
                    dtype=args.dtype,
                    random_init=args.random_init,
                    skip_bad_images=args.skip_bad_images,
                    image_size=args.image_size,
                    decode=args.decode,
                    compile=args.compile,
                    shard=None if args.shard is None else Shard.parse(args.shard),
                    progress=not args.quiet,
                )
        except IncompleteStoreError as err:
            raise ValueError(str(err)) from err
        if args.shard is not None and not args.finalize:
            print(f"{path}: shard {args.shard} done; finalize with --finalize after all shards")
            return 0
        store = open_store(path)
        skipped = sum(len(ids) for ids in store.attrs.get("skipped_images", {}).values())
        print(
            f"{path}: {store.attrs['backbone']} on {store.attrs['dataset']}, "
            f"train {store.num_rows('train')} × test {store.num_rows('test')} rows, "
            f"dim {store.attrs['dim']}, {store.attrs['dtype']}"
            + (f", {skipped} unreadable images skipped" if skipped else "")
        )
        return 0

    parser.set_defaults(handler=handler)


def add_run(sub: argparse._SubParsersAction) -> None:
    """``alfm run``: one AL run (resumes from its checkpoint, extends finished runs)."""

    def json_object(text: str) -> dict:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {text!r}")
        return value

    parser = sub.add_parser(
        "run",
        help="one active-learning run over a feature store",
        description="Run, resume or extend one AL run; results go to OUT (Parquet), the chosen "
        "indices to OUT.indices.npz and the state after every round to OUT.ckpt.",
    )
    parser.add_argument("--features", required=True, help="feature store (zarr directory)")
    parser.add_argument("--strategy", required=True, help="query strategy name or module:Class")
    parser.add_argument("--strategy-params", type=json_object, default={}, help="JSON object")
    parser.add_argument("--init", default="random", help="initial-pool strategy (default random)")
    parser.add_argument("--init-params", type=json_object, default={}, help="JSON object")
    parser.add_argument("--seed", type=int, required=True)
    budget = parser.add_argument_group("budget (BudgetConfig)")
    add_arguments(budget, BudgetConfig, aliases={"evaluations": ["--rounds"]})
    parser.add_argument(
        "--probe",
        type=json_object,
        default={},
        help="probe settings as JSON, e.g. '{\"max_epochs\": 200}'",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls on CUDA (faster)")
    parser.add_argument("--stop-round", type=int, help="advance the run only up to this round")
    parser.add_argument("--out", required=True, help="result Parquet file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handler(args: argparse.Namespace) -> int:
        # Deferred on purpose: alfm.run imports torch, sklearn and pandas, which building the
        # parser (and every other subcommand) does not need.
        from alfm.run import RunConfig, run_active_learning
        from alfm.store import IncompleteStoreError

        config = RunConfig.from_dict(
            {
                "features": args.features,
                "strategy": args.strategy,
                "strategy_params": args.strategy_params,
                "init": args.init,
                "init_params": args.init_params,
                "seed": args.seed,
                "budget": parsed_arguments(args, BudgetConfig),
                "probe": args.probe,
                "device": args.device,
                "tf32": args.tf32,
            }
        )
        try:
            frame = run_active_learning(
                config, args.out, stop_round=args.stop_round, progress=not args.quiet
            )
        except IncompleteStoreError as err:
            raise ValueError(str(err)) from err
        last = frame.iloc[-1]
        print(
            f"{args.out}: {len(frame)} rounds, final accuracy {last.accuracy:.4f} "
            f"with {last.num_labeled} labels"
        )
        return 0

    parser.set_defaults(handler=handler)


def add_aggregate(sub: argparse._SubParsersAction) -> None:
    """``alfm aggregate RUNS... --out DIR``: the tidy table, statistics tables, markdown summary."""
    parser = sub.add_parser(
        "aggregate", help="combine run Parquets into tables (CSV, Parquet) and a markdown summary"
    )
    parser.add_argument("runs", nargs="+", help="run result Parquet files")
    parser.add_argument("--out", required=True, help="output directory for the tables")
    parser.add_argument("--metric", default="accuracy", help="metric for curves and AUC")

    def handler(args: argparse.Namespace) -> int:
        from alfm.results import aggregate

        for path in aggregate(args.runs, args.out, metric=args.metric):
            print(path)
        return 0

    parser.set_defaults(handler=handler)


def add_plot(sub: argparse._SubParsersAction) -> None:
    """``alfm plot TABLE_DIR|RUNS... --out DIR``: every paper figure as PNG and PDF."""
    parser = sub.add_parser("plot", help="render the paper figures from runs or a table directory")
    parser.add_argument(
        "inputs", nargs="+", help="a directory holding runs.parquet (from aggregate) or run files"
    )
    parser.add_argument("--out", required=True, help="output directory for the figures")
    parser.add_argument("--metric", default="accuracy", help="metric for curves and AUC")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"], help="file formats")

    def handler(args: argparse.Namespace) -> int:
        from alfm.plots import write_figures
        from alfm.results import load_inputs

        runs = load_inputs(args.inputs)
        for path in write_figures(runs, args.out, formats=args.formats, metric=args.metric):
            print(path)
        return 0

    parser.set_defaults(handler=handler)


def add_list(sub: argparse._SubParsersAction) -> None:
    """``alfm list models|datasets|strategies``."""
    parser = sub.add_parser("list", help="list registered models, datasets or strategies")
    parser.add_argument("what", choices=["models", "datasets", "strategies"])

    def handler(args: argparse.Namespace) -> int:
        if args.what == "models":
            from alfm.backbones import list_backbones as names
        elif args.what == "datasets":
            from alfm.datasets import list_datasets as names
        else:
            from alfm.strategies import list_strategies as names
        print("\n".join(names()))
        return 0

    parser.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alfm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_extract, add_run, add_aggregate, add_plot, add_list):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``alfm`` console script; errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"alfm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
