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
from finsent.backends import Backend, Predictor, load_predictor, model_folder, model_version
from finsent.config import LABELS, ServeParams, load_params
from finsent.errors import run_cli
from finsent.schemas import ModelStatus, Prediction, PredictResponse, predict_request


def create_app(predictor: Predictor, backend: Backend, version: str | None, params: ServeParams) -> FastAPI:
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
    PredictRequest = predict_request(params.max_texts, params.max_text_chars)
    # One model run at a time, on `serve.model_threads` cores; the others parse and answer HTTP
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
    params = load_params().serve
    parser = argparse.ArgumentParser(prog="finsent-serve", description=__doc__)
    parser.add_argument(
        "-b",
        "--backend",
        choices=["onnx_int8", "onnx_fp32", "pytorch"],
        default=params.backend,
        help=f"runtime and model (default from params.yaml: {params.backend})",
    )
    parser.add_argument(
        "--model-threads",
        type=int,
        default=params.model_threads,
        help=f"cores one model run uses, 0 for all (default from params.yaml: {params.model_threads})",
    )
    parser.add_argument("--host", default=params.host)
    parser.add_argument("--port", type=int, default=params.port)
    parser.add_argument("--model-dir", type=Path, default=Path("models"), help="train stage output")
    parser.add_argument("--exported-dir", type=Path, default=Path("exported"), help="export stage output")
    args = parser.parse_args()
    if args.model_threads < 0:
        parser.error(f"--model-threads: {args.model_threads} is negative (0 means every core)")
    # Loaded before the server starts: a missing model stops here with one line, not a traceback.
    predictor = load_predictor(
        args.backend, args.model_dir, args.exported_dir, params.batch_size, args.model_threads
    )
    version = model_version(model_folder(args.backend, args.model_dir, args.exported_dir))
    app = create_app(predictor, args.backend, version, params)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
