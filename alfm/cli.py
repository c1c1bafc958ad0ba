"""The ``alfm`` command line: thin wrappers over the library functions the workflow also calls."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

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
    parser.add_argument(
        "--out",
        help="store path (default results/features/MODEL/DATASET.zarr, DATASET@112px.zarr with "
        "--image-size 112: the workflow's path)",
    )
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
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handler(args: argparse.Namespace) -> int:
        set_threads(args.threads)
        from alfm.extract import default_store_path, extract_features, finalize_store
        from alfm.store import IncompleteStoreError, Shard, open_store

        try:
            if args.finalize:
                settings = {"image_size": args.image_size, "dtype": args.dtype}
                settings |= {"device": args.device, "decode": args.decode, "compile": args.compile}
                default = default_store_path(args.model, args.dataset, **settings)
                path = finalize_store(args.out or default, args.shards)
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


def json_object(text: str) -> dict:
    """A command-line JSON object (argparse type)."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text!r}")
    return value


def add_run(sub: argparse._SubParsersAction) -> None:
    """``alfm run``: one AL run (resumes from its checkpoint, extends finished runs)."""

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
    parser.add_argument(
        "--ssl",
        type=json_object,
        default={},
        help='label propagation settings as JSON, e.g. \'{"enable": true, "knn": 100}\'',
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
                "ssl": args.ssl,
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


def add_advance(sub: argparse._SubParsersAction) -> None:
    """``alfm advance RUNS --state DIR... --out FILE...``: one AL job of the workflow."""
    parser = sub.add_parser(
        "advance",
        help="advance runs in their state folders and publish their records (one workflow job)",
        description="Advance each run (a RunConfig as JSON; budget.evaluations is the round to "
        "stop at) in its state folder, resuming what an earlier job left there, then copy its "
        "records to OUT and its indices to OUT.indices.npz.",
    )
    parser.add_argument(
        "runs", help="a JSON list of run configs (or one object), or a file holding it"
    )
    parser.add_argument("--state", nargs="+", required=True, help="state folder of each run")
    parser.add_argument("--out", nargs="+", required=True, help="records Parquet of each run")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handler(args: argparse.Namespace) -> int:
        from pathlib import Path

        from alfm.pipeline import advance_and_publish

        text = args.runs if args.runs.lstrip()[:1] in ("[", "{") else Path(args.runs).read_text()
        runs = json.loads(text)
        runs = [runs] if isinstance(runs, dict) else runs
        set_threads(args.threads)
        advance_and_publish(runs, args.state, args.out, progress=not args.quiet)
        for out in args.out:
            print(out)
        return 0

    parser.set_defaults(handler=handler)


def add_aggregate(sub: argparse._SubParsersAction) -> None:
    """``alfm aggregate RESULTS_DIR|RUNS... --out DIR``: the tidy table, statistics tables,
    markdown summary."""
    parser = sub.add_parser(
        "aggregate", help="combine run Parquets into tables (CSV, Parquet) and a markdown summary"
    )
    parser.add_argument(
        "runs",
        nargs="+",
        help="run result Parquet files, or a workflow results folder (each run's final file)",
    )
    parser.add_argument("--out", required=True, help="output directory for the tables")
    parser.add_argument("--metric", default="accuracy", help="metric for curves and AUC")

    def handler(args: argparse.Namespace) -> int:
        from pathlib import Path

        from alfm.pipeline import final_run_files
        from alfm.results import aggregate

        paths = [
            p for arg in args.runs for p in (final_run_files(arg) if Path(arg).is_dir() else [arg])
        ]
        for path in aggregate(paths, args.out, metric=args.metric):
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
    """``alfm list models|datasets|strategies|classifiers``."""
    parser = sub.add_parser(
        "list", help="list registered models, datasets, strategies or classifiers"
    )
    parser.add_argument("what", choices=["models", "datasets", "strategies", "classifiers"])

    def handler(args: argparse.Namespace) -> int:
        if args.what == "models":
            from alfm.backbones import list_backbones as names
        elif args.what == "datasets":
            from alfm.datasets import list_datasets as names
        elif args.what == "classifiers":
            from alfm.classifiers import list_classifiers as names
        else:
            from alfm.strategies import list_strategies as names
        print("\n".join(names()))
        return 0

    parser.set_defaults(handler=handler)


def add_check(sub: argparse._SubParsersAction) -> None:
    """``alfm check STORE...``: verify feature stores fully (every chunk read and checksummed)."""
    parser = sub.add_parser(
        "check",
        help="verify feature stores: every chunk present, readable and as written",
        description="Check each feature store fully: complete, every chunk file present with "
        "the size written, every chunk decodable and equal to the checksum recorded when it was "
        "written. Exit 0 when all are sound, 2 naming the first bad store, split and chunk.",
    )
    parser.add_argument("stores", nargs="+", help="feature store (zarr directory)")

    def handler(args: argparse.Namespace) -> int:
        from alfm.store import IncompleteStoreError, verify_store

        for path in args.stores:
            try:
                report = verify_store(path)
            except IncompleteStoreError as err:
                raise ValueError(str(err)) from err
            splits = ", ".join(
                f"{split} {r['rows']} rows in {r['chunks']} chunks" for split, r in report.items()
            )
            checked = (
                "checksums match"
                if all(r["checksums"] for r in report.values())
                else "all chunks read (no checksums recorded: an older store)"
            )
            print(f"{path}: ok ({splits}; {checked})")
        return 0

    parser.set_defaults(handler=handler)


def add_label(sub: argparse._SubParsersAction) -> None:
    """``alfm label init|next|import|status|export|push|pull``: the real labeling loop."""
    parser = sub.add_parser(
        "label",
        help="label a store's images: batches to label, labels back, when to stop",
        description="The real active-learning loop over a feature store of your images: init a "
        "project, ask for the next batch, label it (CSV or Label Studio), import the labels, "
        "repeat until status says the classifier has stabilized. See docs/LABELING.md.",
    )
    commands = parser.add_subparsers(dest="label_command", required=True)

    def project_command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help, description=description)
        command.add_argument("project", help="project folder (from alfm label init)")
        command.add_argument("--features", help="the project's store, where it moved")
        return command

    init = commands.add_parser(
        "init",
        help="create a labeling project over a feature store",
        description="Create the project folder: its config, an empty labels table, no rounds.",
    )
    init.add_argument("--features", required=True, help="feature store (from alfm extract)")
    init.add_argument(
        "--classes", help="class names: a,b,c or a file with one per line (default: the store's)"
    )
    init.add_argument("--out", required=True, help="project folder to create")
    # Defaults (None) come from alfm.labeling.ProjectConfig, their one definition.
    init.add_argument("--seed", type=int, help="seed of every random draw (0)")
    init.add_argument("--strategy", help="query strategy after the first batch (dropquery)")
    init.add_argument("--strategy-params", type=json_object, help="JSON object")
    init.add_argument("--init", help="first batch's strategy (centroid)")
    init.add_argument("--init-params", type=json_object, help="JSON object")
    init.add_argument("--probe", type=json_object, help="probe settings as JSON")
    init.add_argument("--device", choices=DEVICES, help="auto (CUDA when available), cpu, cuda")
    init.add_argument("--media-root", help="folder of the images (default: the dataset's)")
    init.add_argument("--document-root", help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT")
    init.add_argument("--url-prefix", help="image URLs: this prefix + path under --media-root")
    init.add_argument("--title", help="Label Studio project title (default: folder name)")
    init.add_argument(
        "--stop-kappa",
        type=float,
        help="stabilizing predictions fire above this mean kappa of the last 3 rounds (0.99)",
    )

    def run_init(args: argparse.Namespace) -> int:
        from alfm.labeling import init_project, parse_classes

        keys = ("seed", "strategy", "strategy_params", "init", "init_params", "probe", "device",
                "media_root", "document_root", "url_prefix", "title", "stop_kappa")  # fmt: skip
        settings = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
        classes = parse_classes(args.classes) if args.classes else None
        out = init_project(args.features, args.out, classes, **settings)
        print(f"{out}: labeling project over {args.features}; next: alfm label next {out}")
        return 0

    init.set_defaults(handler=run_init)

    proposal = project_command(
        "next",
        "propose the next batch to label (the same one until it is labeled)",
        "Train the classifier on the labels so far and write the next batch to label: "
        "rounds/NNN/batch.csv (id, path, predicted_label, confidence) and rounds/NNN/tasks.json "
        "(Label Studio tasks with pre-annotations). The first batch comes from the init strategy. "
        "While the last batch has ids without labels, the same batch is written again.",
    )
    proposal.add_argument("--budget", type=int, help="images in the batch (100)")
    proposal.add_argument("--strategy", help="query strategy (default: the project's)")
    proposal.add_argument("--strategy-params", type=json_object, help="JSON object")
    proposal.add_argument(
        "--skip-unlabeled",
        action="store_true",
        help="propose a new batch although the last one has ids without labels",
    )

    def run_next(args: argparse.Namespace) -> int:
        from alfm.labeling import LabelingProject, next_batch

        project = LabelingProject(args.project, args.features)
        budget = {} if args.budget is None else {"budget": args.budget}  # default: next_batch's
        result = next_batch(
            project,
            strategy=args.strategy,
            strategy_params=args.strategy_params,
            skip_unlabeled=args.skip_unlabeled,
            **budget,
        )
        batch = result.batch
        state = "new batch" if result.new else f"batch still open, {result.unlabeled} to label"
        print(
            f"round {batch.round} ({state}): {len(batch.ids)} images by {batch.strategy}: "
            f"{result.folder / 'batch.csv'}, {result.folder / 'tasks.json'}"
        )
        if result.images_problem:
            print(f"note: no image paths ({result.images_problem})", file=sys.stderr)
        return 0

    proposal.set_defaults(handler=run_next)

    importing = project_command(
        "import",
        "import labels: a Label Studio JSON export or a CSV id,label",
        "Add the labels of FILE (a Label Studio JSON export, or a CSV with columns id,label and "
        "optionally annotator) to the labels table. All or nothing: unknown ids, labels outside "
        "the class list, ids never proposed and conflicting labels are reported and change "
        "nothing; importing the same file twice changes nothing.",
    )
    importing.add_argument("file", help="JSON export or CSV")

    def run_import(args: argparse.Namespace) -> int:
        from alfm.labeling import LabelingProject, import_labels, read_import_file

        project = LabelingProject(args.project, args.features)
        entries, source = read_import_file(args.file)
        result = import_labels(project, entries, source)
        print(_import_summary(args.file, result))
        return 0

    importing.set_defaults(handler=run_import)

    status = project_command(
        "status",
        "labels per class, accuracy and the stopping signals",
        "Labels per class, classes never seen, rounds, the classifier's accuracy (on the "
        "store's evaluation split, else cross-validated on the labels) and the stopping signals "
        "that need no ground truth: stabilizing predictions (Bloodgood & Vijay-Shanker 2009), "
        "the confidence peak (Vlachos 2008), selected accuracy (Zhu et al. 2008).",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    def run_status(args: argparse.Namespace) -> int:
        from alfm.labeling import LabelingProject, format_status, project_status

        report = project_status(LabelingProject(args.project, args.features))
        print(json.dumps(report, indent=2) if args.json else format_status(report))
        return 0

    status.set_defaults(handler=run_status)

    export = project_command(
        "export",
        "write every image's label, or the classifier's prediction and confidence",
        "Write a CSV id,label,status,confidence,annotator,round: the labels, and for the "
        "unlabeled rest the current classifier's prediction with its confidence.",
    )
    export.add_argument("--out", help="CSV to write (default PROJECT/export.csv)")

    def run_export(args: argparse.Namespace) -> int:
        from pathlib import Path

        from alfm.labeling import LabelingProject, export_project

        project = LabelingProject(args.project, args.features)
        print(export_project(project, args.out or Path(args.project) / "export.csv"))
        return 0

    export.set_defaults(handler=run_export)

    push = project_command(
        "push",
        "upload the last batch to Label Studio as tasks with pre-annotations",
        "Create (or reuse, by title) the Label Studio project with the class list as its "
        "labeling config and upload the last batch's tasks that it lacks. The server: "
        "$LABEL_STUDIO_URL and $LABEL_STUDIO_API_KEY (never stored in the project).",
    )

    def run_push(args: argparse.Namespace) -> int:
        from alfm.label_studio import push_batch
        from alfm.labeling import LabelingProject

        result = push_batch(LabelingProject(args.project, args.features))
        print(
            f"Label Studio project {result.project_id}: {result.uploaded} tasks uploaded, "
            f"{result.present} already there"
        )
        return 0

    push.set_defaults(handler=run_push)

    pull = project_command(
        "pull",
        "import the finished annotations from Label Studio",
        "Export the Label Studio project's annotations and import them as alfm label import "
        "does. The server: $LABEL_STUDIO_URL and $LABEL_STUDIO_API_KEY.",
    )

    def run_pull(args: argparse.Namespace) -> int:
        from alfm.label_studio import pull_labels
        from alfm.labeling import LabelingProject

        project_id, result = pull_labels(LabelingProject(args.project, args.features))
        print(_import_summary(f"Label Studio project {project_id}", result))
        return 0

    pull.set_defaults(handler=run_pull)


def _import_summary(source: str, result: Any) -> str:
    return (
        f"{source}: {result.new} new labels, {result.changed} changed, "
        f"{result.unchanged} already known"
    )


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given (torch is imported only then)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (naming the option) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="alfm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (add_extract, add_run, add_advance, add_aggregate, add_plot, add_list, add_check)
    for add in (*commands, add_label):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``alfm`` console script; errors print one line and exit 2 (bad input,
    and file-system errors such as a read-only folder or a full disk, which name the path)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError, KeyError) as err:
        command = " ".join(filter(None, [args.command, getattr(args, "label_command", None)]))
        print(f"alfm {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
