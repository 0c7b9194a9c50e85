"""Command line: `imgcls train`, `serve`, `prepare`, `export onnx`, `hyperparameters`, scripts/*."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from imgcls.mxnet_import import import_mxnet
from imgcls.system import cpu_count, exit_now


def configure_threads(environ: dict[str, str] = os.environ) -> None:  # type: ignore[assignment]
    """Use every core this process may run on, before MXNet loads.

    MXNet's default OpenMP setting uses half the cores on x86, which halves training speed
    on small machines (see README, performance). An explicit OMP_NUM_THREADS wins.
    """
    environ.setdefault("OMP_NUM_THREADS", str(cpu_count()))


def _train(args: argparse.Namespace) -> int:
    """The job runs in a child this process watches (see training/supervisor.py); a dry run
    and the child itself run it here."""
    configure_threads()
    from imgcls.config.environment import paths_from_env
    from imgcls.failure import report_failure
    from imgcls.log import setup_logging
    from imgcls.training.supervisor import child_engine, is_supervised, supervise

    setup_logging()
    paths = paths_from_env()
    paths.failure_file.unlink(missing_ok=True)
    if not args.dry_run and not is_supervised():
        return supervise(["train"], paths.failure_file, child_engine(paths))
    from imgcls.training.job import run_training
    from imgcls.training.report.handoff import take_hand_over

    hand_over = take_hand_over()  # the supervising parent draws the report
    try:
        return run_training(paths, dry_run=args.dry_run, hand_over=hand_over)
    except Exception as exc:
        return report_failure(exc, paths.failure_file)


def _serve(args: argparse.Namespace) -> int:
    """The model server; each of its workers gets an equal share of the cores."""
    from imgcls.config.environment import paths_from_env
    from imgcls.config.serving import serving_settings_from_env, threads_per_worker
    from imgcls.errors import ClientError
    from imgcls.failure import failure_text
    from imgcls.log import logger, setup_logging

    setup_logging()
    try:
        settings = serving_settings_from_env()
    except ClientError as exc:
        logger.error(failure_text(exc))
        return 1
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_worker(cpu_count(), settings.workers)))
    import_mxnet()  # the collector paused, operators cached: ~1 s faster
    from imgcls.serving.server import run_server

    run_server(paths_from_env().model_dir, settings, args.host)
    return 0


def _serve_batch(args: argparse.Namespace) -> int:
    configure_threads()
    from imgcls.config.environment import paths_from_env
    from imgcls.errors import ImgclsError
    from imgcls.failure import failure_text
    from imgcls.log import logger, setup_logging

    import_mxnet()  # the collector paused, operators cached: ~1 s faster
    from imgcls.serving.batch import run_batch

    setup_logging()
    try:
        return run_batch(
            args.input,
            args.output,
            args.model or paths_from_env().model_dir,
            endpoint_url=args.endpoint_url,
            overwrite=args.overwrite,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
        )
    except ImgclsError as exc:
        logger.error(failure_text(exc))
        return 1


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="run the model server (port: SAGEMAKER_BIND_TO_PORT, default 8080)"
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default: 0.0.0.0)")
    serve.set_defaults(handler=_serve)
    batch = serve.add_subparsers(dest="serve_command").add_parser(
        "batch", help="score every image of a folder or S3 prefix into <name>.out files"
    )
    batch.add_argument("--input", required=True, metavar="SRC", help="folder or s3://bucket/prefix")
    batch.add_argument(
        "--output", required=True, metavar="DST", help="folder or s3://bucket/prefix"
    )
    batch.add_argument(
        "--model",
        type=Path,
        help="model folder or model.tar.gz (default: $SAGEMAKER_BASE_DIR/model)",
    )
    batch.add_argument(
        "--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)"
    )
    batch.add_argument("--overwrite", action="store_true", help="re-score existing outputs")
    batch.add_argument(
        "--concurrency", type=_positive_int, default=4, help="files in flight (default: 4)"
    )
    batch.add_argument(
        "--batch-size",
        type=_positive_int,
        help="images per forward pass (default: from the image shape, at most 64)",
    )
    batch.set_defaults(handler=_serve_batch)


def _prepare(args: argparse.Namespace) -> int:
    configure_threads()
    from imgcls.data.job_folder import prepare_job
    from imgcls.errors import ImgclsError
    from imgcls.failure import failure_text
    from imgcls.log import logger, setup_logging

    setup_logging()
    try:
        job = prepare_job(
            args.images_dir,
            args.base_dir,
            validation_fraction=args.validation_fraction,
            resize=args.resize,
            seed=args.seed,
            force=args.force,
        )
    except ImgclsError as exc:
        logger.error(failure_text(exc))
        return 1
    validation = sum(job.validation.counts) if job.validation else 0
    logger.info(
        "Prepared %s: %d classes, %d training and %d validation images, %d skipped; smallest "
        "image %dx%d (set image_shape no larger in hyperparameters.json). "
        "Train with: SAGEMAKER_BASE_DIR=%s imgcls train",
        job.base_dir,
        len(job.classes),
        sum(job.train.counts),
        validation,
        len(job.bad),
        job.train.min_size[1],
        job.train.min_size[0],
        job.base_dir,
    )
    return 0


def _add_prepare(commands: argparse._SubParsersAction) -> None:
    prepare = commands.add_parser(
        "prepare", help="write a training job (RecordIO channels, config) from class folders"
    )
    prepare.add_argument("images_dir", type=Path, help="a folder with one subfolder per class")
    prepare.add_argument("base_dir", type=Path, help="the job folder to write (SAGEMAKER_BASE_DIR)")
    prepare.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="share of each class kept for validation (default: 0.1; 0: no validation channel)",
    )
    prepare.add_argument(
        "--resize", type=_positive_int, help="resize the shorter side to this many pixels"
    )
    prepare.add_argument("--seed", type=int, default=0, help="seed of the split and shuffle")
    prepare.add_argument(
        "--force", action="store_true", help="replace the job files already in BASE_DIR"
    )
    prepare.set_defaults(handler=_prepare)


def _export_onnx(args: argparse.Namespace) -> int:
    from imgcls.errors import ImgclsError
    from imgcls.failure import failure_text
    from imgcls.log import logger, setup_logging
    from imgcls.model.onnx_export import export_onnx

    setup_logging()
    try:
        done = export_onnx(args.model, args.out)
    except ImgclsError as exc:
        logger.error(failure_text(exc))
        return 1
    logger.info(
        "Wrote %s (epoch %d): input 'data' float32 (N, %s) 0-255 pixels, output probabilities",
        done.path,
        done.epoch,
        ", ".join(map(str, done.image_shape)),
    )
    return 0


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="write a trained model in another format")
    formats = export.add_subparsers(dest="format", required=True)
    onnx = formats.add_parser("onnx", help="ONNX, through MXNet's mx.onnx (needs imgcls[onnx])")
    onnx.add_argument("model", type=Path, help="model folder or model.tar.gz")
    onnx.add_argument("out", type=Path, help="the .onnx file to write")
    onnx.set_defaults(handler=_export_onnx)


def _hyperparameters(args: argparse.Namespace) -> int:
    from imgcls.config.hyperparameters import json_schema, markdown_table

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
    _add_serve(commands)
    _add_prepare(commands)
    _add_export(commands)

    hyper = commands.add_parser("hyperparameters", help="print the hyperparameter table")
    hyper.add_argument(
        "--json-schema", action="store_true", help="print a JSON Schema instead of Markdown"
    )
    hyper.set_defaults(handler=_hyperparameters)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


def _exit(code: int) -> NoReturn:
    """The end of `python -m imgcls.cli`. The single-host job's child has written and closed
    every file when main returns: it ends at once, skipping the interpreter's teardown of
    MXNet (0.3-0.6 s). A multi-host worker exits normally: it must close its kvstore link."""
    from imgcls.training.distributed.launch import is_worker_process
    from imgcls.training.supervisor import is_supervised

    if is_supervised() and not is_worker_process():
        exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
