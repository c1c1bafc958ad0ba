"""The ``alfm`` command line: thin wrappers over the library functions the workflow also calls."""

from __future__ import annotations

import argparse
import sys


def add_extract(sub: argparse._SubParsersAction) -> None:
    """``alfm extract``: build a feature store (issue 2 fills this in)."""
    raise NotImplementedError


def add_run(sub: argparse._SubParsersAction) -> None:
    """``alfm run``: one active-learning run (issue 4 fills this in)."""
    raise NotImplementedError


def add_aggregate(sub: argparse._SubParsersAction) -> None:
    """``alfm aggregate``: tables from runs (issue 6 fills this in)."""
    raise NotImplementedError


def add_plot(sub: argparse._SubParsersAction) -> None:
    """``alfm plot``: figures from aggregated tables (issue 6 fills this in)."""
    raise NotImplementedError


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
