"""The `finsent-serve` command: the classifier behind an HTTP API (FastAPI on uvicorn), loaded once.

Concurrent requests share model runs (`finsent.inference.api.batching`); each answer is logged as one
JSON line on stdout; metrics at /metrics. Limits against hostile or broken clients: body size and
time, texts waiting for the model; with front nginx (`finsent.inference.api.front`) also header size
and time, requests in progress, idle connections. SIGTERM gives the requests in flight
shutdown_timeout_s to be answered (a 503 for those left), then exits.
"""

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from finsent import __version__
from finsent.cli import run_cli
from finsent.config import BACKENDS, LABELS, Backend
from finsent.inference.api.batching import Batcher, Overloaded
from finsent.inference.api.front import API_KEEP_ALIVE_S, nginx_executable, nginx_front
from finsent.inference.api.limits import RETRY_AFTER, BodyLimit, FailureAnswers
from finsent.inference.api.observability import (
    AccessLog,
    Metrics,
    leave_access_log_to_front,
    log_access_to_stdout,
)
from finsent.inference.api.schemas import (
    ErrorMessage,
    ModelStatus,
    Prediction,
    PredictResponse,
    ValidationErrors,
    class_probabilities,
    predict_request,
)
from finsent.inference.api.settings import ServeSettings
from finsent.inference.predictors import Predictor
from finsent.inference.settings import PredictorSettings, load_settings

MAX_REPORTED_ERRORS = 10
MAX_LOC_CHARS = 64


def create_app(
    predictor: Predictor, backend: Backend, version: str, settings: ServeSettings, metrics: Metrics
) -> FastAPI:
    """The API around a loaded `predictor`; it is ready once a first prediction has warmed it up."""

    app = FastAPI(
        title="finsent",
        version=__version__,
        description="Sentiment of finance tweets: Bearish, Bullish or Neutral.",
        lifespan=batcher_lifespan(predictor, settings, metrics),
        redirect_slashes=False,  # a redirect would echo the client's Host header in its Location
    )
    app.state.batcher = None
    app.add_exception_handler(RequestValidationError, validation_failed)
    PredictRequest = predict_request(settings.max_texts, settings.max_text_chars)

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="The model is loaded",
        response_model=ModelStatus,
        responses={503: {"model": ErrorMessage, "description": "not ready yet"}},
    )
    async def readyz(request: Request):
        if request.app.state.batcher is None:
            return JSONResponse({"detail": "model not loaded yet"}, status_code=503)
        return ModelStatus(status="ready", backend=backend, model_version=version)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/v1/predict",
        summary="Classify texts",
        dependencies=[Depends(json_content_type)],
        responses=predict_responses(settings),
    )
    async def predict(body: PredictRequest, request: Request) -> PredictResponse:
        try:
            probabilities = await request.app.state.batcher.predict(body.texts)
        except Overloaded:
            raise HTTPException(503, "overloaded, retry later", headers=RETRY_AFTER) from None
        predictions = [
            Prediction(label=LABELS[row.argmax()], probabilities=class_probabilities(row))
            for row in probabilities
        ]
        return PredictResponse(predictions=predictions, backend=backend, model_version=version)

    add_protections(app, settings, metrics)
    return app


def batcher_lifespan(predictor: Predictor, settings: ServeSettings, metrics: Metrics):
    """The app's lifespan: the model warmed up and its batcher started before the first request, the
    batcher stopped after the last."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        predictor.predict_proba(["warm-up"])  # the first run allocates; no request should pay for it
        batcher = Batcher(
            predictor.predict_proba,
            window_s=settings.batch_window_ms / 1000,
            max_batch=predictor.batch_size,
            max_queued=settings.max_queued_texts,
            on_batch=metrics.batch_texts.observe,
        )
        metrics.waiting_texts.set_function(lambda: batcher.waiting_texts)
        batcher.start()
        app.state.batcher = batcher
        yield
        await batcher.stop()  # uvicorn calls this once the requests in flight are answered

    return lifespan


def predict_responses(settings: ServeSettings) -> dict:
    """The answers of /v1/predict other than 200, as the OpenAPI schema states them."""
    retry_after = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return {
        400: {"model": ErrorMessage, "description": "the body could not be read or parsed"},
        408: {
            "model": ErrorMessage,
            "description": f"the body not whole within {settings.request_timeout_s:g} s of the headers",
        },
        413: {
            "model": ErrorMessage,
            "description": f"body over {settings.max_body_bytes} bytes "
            f"or {settings.max_body_values} JSON values",
        },
        415: {"model": ErrorMessage, "description": "the Content-Type is not application/json"},
        422: {"model": ValidationErrors, "description": "the body is not a valid request"},
        500: {
            "model": ErrorMessage,
            "description": "an unexpected error, such as the model failing on the texts",
        },
        503: {
            "model": ErrorMessage,
            "description": "overloaded (too many texts wait for the model, or too many requests in "
            "progress) or shutting down; retry later",
            "headers": retry_after,
        },
    }


def add_protections(app: FastAPI, settings: ServeSettings, metrics: Metrics) -> None:
    """The body's bounds, JSON answers for failures and the access log, around every route."""
    # Added innermost first: AccessLog sees (and gives an id to) every answer of the others.
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        max_values=settings.max_body_values,
        timeout_s=settings.request_timeout_s,
        close_early=settings.front == "none",
    )
    app.add_middleware(FailureAnswers)
    app.add_middleware(AccessLog, metrics=metrics, routes=frozenset(route.path for route in app.routes))


def json_content_type(request: Request) -> None:
    """A 415 for a body that is not declared JSON (FastAPI, as it should, does not parse it as JSON,
    and the validation error would then say that the body is not an object)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    main_type, _, subtype = media_type.partition("/")
    if main_type != "application" or not (subtype == "json" or subtype.endswith("+json")):
        raise HTTPException(415, "the body must be JSON, sent with Content-Type: application/json")


async def validation_failed(request: Request, error: RequestValidationError) -> JSONResponse:
    """A 422 that says where and what, never echoing the input (FastAPI's own answer does: a 50 MB body
    got a 52 MB answer, and a NaN or a lone surrogate in it could not be written as JSON at all)."""
    detail = [
        {"loc": [_printable(part) for part in item["loc"]], "msg": item["msg"], "type": item["type"]}
        for item in error.errors()[:MAX_REPORTED_ERRORS]
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _printable(part: str | int) -> str | int:
    """A location part as UTF-8 can carry it: an unknown field's name is the client's text."""
    if isinstance(part, int):
        return part
    return part[:MAX_LOC_CHARS].encode("utf-8", "replace").decode("utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="finsent-serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Which model (--backend, --model-dir, --exported-dir, and the batch size): FINSENT_<SETTING>, "
        "else params.yaml's inference section, else the default (finsent/inference/settings.py). The "
        "server's own settings: FINSENT_SERVE_<SETTING>, else params.yaml's serve section, else the "
        "default (finsent/inference/api/settings.py). A flag overrides either.",
    )
    parser.add_argument("-b", "--backend", choices=BACKENDS, help="runtime and model")
    parser.add_argument("--model-threads", type=int, help="cores one model run uses, 0 for all")
    parser.add_argument("--front", choices=("none", "nginx"), help="nginx in front of the API, or none")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model-dir", type=Path, help="train stage output")
    parser.add_argument("--exported-dir", type=Path, help="export stage output")
    args = parser.parse_args()
    model = load_settings(
        PredictorSettings, backend=args.backend, model_dir=args.model_dir, exported_dir=args.exported_dir
    )
    settings = load_settings(
        ServeSettings, model_threads=args.model_threads, front=args.front, host=args.host, port=args.port
    )
    if settings.front == "nginx":
        nginx_executable()  # a missing nginx stops here, before the model loads
    # Loaded before the server starts: a missing model stops here with one line, not a traceback.
    predictor = model.load(settings.model_threads)
    version = predictor.version
    metrics = Metrics(model.backend, version)
    app = create_app(predictor, model.backend, version, settings, metrics)
    if settings.front == "nginx":
        leave_access_log_to_front()
        with nginx_front(settings) as api_socket:
            serve(
                app, settings, uds=str(api_socket), proxy_headers=False, timeout_keep_alive=API_KEEP_ALIVE_S
            )
    else:
        log_access_to_stdout()
        serve(
            app,
            settings,
            host=settings.host,
            port=settings.port,
            proxy_headers=bool(settings.forwarded_allow_ips),
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )


def serve(app: FastAPI, settings: ServeSettings, **where) -> None:
    """uvicorn, with its documented settings only, on `where` (a host and port, or a Unix socket)."""
    uvicorn.run(
        app,
        log_level="info",
        access_log=False,  # AccessLog, or nginx, writes one JSON line an answer instead
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        **where,
    )


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
