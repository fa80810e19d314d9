"""The `finsent-serve` command: the classifier behind an HTTP API (FastAPI on uvicorn), loaded once."""

import argparse
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from finsent import __version__
from finsent.cli import run_cli
from finsent.config import BACKENDS, LABELS, Backend
from finsent.predictors import Predictor, load_predictor, model_folder
from finsent.serving.model_version import model_version
from finsent.serving.schemas import ModelStatus, Prediction, PredictResponse, predict_request
from finsent.serving.settings import ServeSettings, load_serve_settings


def create_app(
    predictor: Predictor, backend: Backend, version: str | None, settings: ServeSettings
) -> FastAPI:
    """The API around a loaded `predictor`; it is ready once a first prediction has warmed it up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        predictor.predict_proba(["warm-up"])  # the first run allocates; no request should pay for it
        app.state.ready = True
        yield

    app = FastAPI(
        title="finsent",
        version=__version__,
        description="Sentiment of finance tweets: Bearish, Bullish or Neutral.",
        lifespan=lifespan,
    )
    app.state.ready = False
    PredictRequest = predict_request(settings.max_texts, settings.max_text_chars)
    # One model run at a time, on `model_threads` cores; the others parse and answer HTTP
    # meanwhile. Requests are not batched together: an int8 model's result for a text would then
    # depend on the texts of other requests (activations are quantized per batch).
    model_lock = threading.Lock()

    @app.get("/healthz", summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="The model is loaded",
        response_model=ModelStatus,
        responses={503: {"description": "not ready yet"}},
    )
    def readyz(request: Request):
        if not request.app.state.ready:
            return JSONResponse({"detail": "model not loaded yet"}, status_code=503)
        return ModelStatus(status="ready", backend=backend, model_version=version)

    @app.post("/v1/predict", summary="Classify texts")
    def predict(body: PredictRequest) -> PredictResponse:  # a plain def: FastAPI runs it in a worker thread
        with model_lock:
            probabilities = predictor.predict_proba(body.texts)
        predictions = [
            Prediction(label=LABELS[row.argmax()], probabilities=dict(zip(LABELS, row.tolist(), strict=True)))
            for row in probabilities
        ]
        return PredictResponse(predictions=predictions, backend=backend, model_version=version)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="finsent-serve",
        description=__doc__,
        epilog="Each flag's default comes from FINSENT_SERVE_<FLAG>, else params.yaml's serve section, "
        "else the built-in default (finsent/serving/settings.py).",
    )
    parser.add_argument("-b", "--backend", choices=BACKENDS, help="runtime and model")
    parser.add_argument("--model-threads", type=int, help="cores one model run uses, 0 for all")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model-dir", type=Path, help="train stage output")
    parser.add_argument("--exported-dir", type=Path, help="export stage output")
    settings = load_serve_settings(**vars(parser.parse_args()))
    # Loaded before the server starts: a missing model stops here with one line, not a traceback.
    predictor = load_predictor(
        settings.backend,
        settings.model_dir,
        settings.exported_dir,
        settings.batch_size,
        settings.model_threads,
    )
    version = model_version(model_folder(settings.backend, settings.model_dir, settings.exported_dir))
    app = create_app(predictor, settings.backend, version, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
