"""Command line: `imgcls train`, `imgcls serve`, `imgcls hyperparameters` (and scripts/*)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence


def configure_threads(environ: dict[str, str] = os.environ) -> None:  # type: ignore[assignment]
    """Use every core this process may run on, before MXNet loads.

    MXNet's default OpenMP setting uses half the cores on x86, which halves training speed
    on small machines (see README, performance). An explicit OMP_NUM_THREADS wins.
    """
    environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


def _train(args: argparse.Namespace) -> int:
    configure_threads()
    from imgcls.environment import paths_from_env
    from imgcls.failure import report_failure
    from imgcls.job import run_training
    from imgcls.log import setup_logging

    setup_logging()
    paths = paths_from_env()
    paths.failure_file.unlink(missing_ok=True)
    try:
        run_training(paths, dry_run=args.dry_run)
    except Exception as exc:
        return report_failure(exc, paths.failure_file)
    return 0


def _hyperparameters(args: argparse.Namespace) -> int:
    from imgcls.hyperparameters import json_schema, markdown_table

    if args.json_schema:
        print(json.dumps(json_schema(), indent=2))
    else:
        print(markdown_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run a SageMaker-style training job")
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="validate hyperparameters and channels and print a summary, without training",
    )
    train.set_defaults(handler=_train)

    hyper = commands.add_parser("hyperparameters", help="print the hyperparameter table")
    hyper.add_argument(
        "--json-schema", action="store_true", help="print a JSON Schema instead of Markdown"
    )
    hyper.set_defaults(handler=_hyperparameters)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
