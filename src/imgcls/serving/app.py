"""The model server's WSGI application: `/ping`, `/invocations`, `/execution-parameters`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import mxnet as mx

from imgcls.config.content_types import IMAGE_CONTENT_TYPES
from imgcls.config.serving import ServingSettings
from imgcls.errors import ClientError
from imgcls.log import logger
from imgcls.serving.predictor import JSON, JSONLINES, Predictor, encode, load_predictor

_WILDCARDS = ("*/*", "application/*")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    error: str = ""


class HttpError(Exception):
    """A request the server refuses with `status` and a JSON `{"error": message}` body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class WorkerTimeout(BaseException):
    """The request outlived SAGEMAKER_MODEL_SERVER_TIMEOUT: raised in the request's frame by
    gunicorn's worker_abort hook (server.abort_request), before the worker exits."""


def error_response(status: int, message: str) -> Response:
    return Response(status, json.dumps({"error": message}).encode(), error=message)


def media_type(header: str) -> str:
    """`image/png` of `Image/PNG; charset=x`."""
    return header.split(";", 1)[0].strip().lower()


def _quality(parameters: list[str]) -> float:
    """The q value of one Accept entry's parameters (1 when absent, 0 when unreadable)."""
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def negotiate(accept: str) -> str:
    """The response type for an Accept header: JSON unless JSON Lines is preferred; else 406."""
    if not accept.strip():
        return JSON
    entries = [part.split(";") for part in accept.split(",")]
    ranked = sorted(entries, key=lambda entry: -_quality(entry[1:]))
    for entry in ranked:
        kind = entry[0].strip().lower()
        if _quality(entry[1:]) <= 0:
            continue
        if kind in (JSON, JSONLINES):
            return kind
        if kind in _WILDCARDS:
            return JSON
    raise HttpError(406, f"cannot answer with {accept!r}: accept {JSON} or {JSONLINES}")


class ServingApp:
    """The WSGI callable. Each worker process calls `load_model` after the fork."""

    def __init__(self, model_dir: Path, settings: ServingSettings):
        self.model_dir = Path(model_dir)
        self.settings = settings
        self.predictor: Predictor | None = None
        self.phase = ""  # what the request in progress waits for: "body", "work" or "" (none)
        self._routes: dict[str, tuple[str, Callable[[dict], Response]]] = {
            "/ping": ("GET", self._ping),
            "/invocations": ("POST", self._invocations),
            "/execution-parameters": ("GET", self._execution_parameters),
        }

    def load_model(self, ctx: mx.Context | None = None) -> None:
        """Load the model onto `ctx` (load_predictor's default device when None)."""
        self.predictor = load_predictor(self.model_dir, ctx)

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        response = self._respond(environ)
        phrase = HTTPStatus(response.status).phrase
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
        ]
        start_response(f"{response.status} {phrase}", headers)
        logger.info(
            "%s %s %d %.1f ms%s",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            response.status,
            (time.perf_counter() - started) * 1000,
            f": {response.error}" if response.error else "",
        )
        return [response.body]

    def _respond(self, environ: dict) -> Response:
        """The response to any request; never raises, so a bad request cannot stop the worker."""
        self.phase = "work"
        try:
            return self._route(environ)
        except WorkerTimeout:
            return self._timeout_response()
        except HttpError as exc:
            return error_response(exc.status, str(exc))
        except ClientError as exc:
            return error_response(400, str(exc))
        except Exception:
            logger.exception("Unexpected error while answering %s", environ.get("PATH_INFO"))
            return error_response(500, "internal error; the server log has the details")
        finally:
            self.phase = ""

    def _timeout_response(self) -> Response:
        """408 when the body was still arriving at the timeout, else 504; the worker then exits."""
        limit = f"SAGEMAKER_MODEL_SERVER_TIMEOUT ({self.settings.timeout} s)"
        if self.phase == "body":
            return error_response(
                408, f"the request body did not arrive within {limit}: send the whole image"
            )
        return error_response(
            504,
            f"answering took longer than {limit}; the worker is restarted: raise the "
            "timeout or send a smaller image",
        )

    def _route(self, environ: dict) -> Response:
        path = environ.get("PATH_INFO", "")
        if path not in self._routes:
            raise HttpError(404, f"no such path {path!r}: use {', '.join(self._routes)}")
        method, handler = self._routes[path]
        if environ.get("REQUEST_METHOD") != method:
            raise HttpError(405, f"{path} answers {method} requests only")
        return handler(environ)

    def _loaded_predictor(self) -> Predictor:
        if self.predictor is None:
            raise HttpError(503, "the model is not loaded")
        return self.predictor

    def _ping(self, environ: dict) -> Response:
        self._loaded_predictor()
        return Response(200, b"", "text/plain")

    def _execution_parameters(self, environ: dict) -> Response:
        parameters = {
            "MaxConcurrentTransforms": self.settings.max_concurrent_transforms,
            "BatchStrategy": self.settings.batch_strategy,
            "MaxPayloadInMB": self.settings.max_payload_mb,
        }
        return Response(200, json.dumps(parameters).encode())

    def _invocations(self, environ: dict) -> Response:
        predictor = self._loaded_predictor()
        self._check_length(environ.get("CONTENT_LENGTH") or "")
        kind = media_type(environ.get("CONTENT_TYPE", ""))
        if kind not in IMAGE_CONTENT_TYPES:
            raise HttpError(
                415,
                f"unsupported content type {kind or '(none)'!r}: send one image as "
                + ", ".join(IMAGE_CONTENT_TYPES),
            )
        answer_type = negotiate(environ.get("HTTP_ACCEPT", ""))
        self.phase = "body"
        data = environ["wsgi.input"].read(self.settings.max_payload_bytes + 1)
        self.phase = "work"
        self._check_length(str(len(data)))
        probabilities = predictor.predict(data, "the request body")
        return Response(200, encode(probabilities, answer_type), answer_type)

    def _check_length(self, length: str) -> None:
        """413 when a (declared or read) body length exceeds SAGEMAKER_MAX_PAYLOAD_IN_MB."""
        if length.isdigit() and int(length) > self.settings.max_payload_bytes:
            raise HttpError(
                413,
                f"the payload exceeds the limit of {self.settings.max_payload_mb} MB "
                "(SAGEMAKER_MAX_PAYLOAD_IN_MB): send one image per request",
            )
