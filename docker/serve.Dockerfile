# The HTTP API on the exported int8 model, nginx in front (docs/serving.md, "The front"): build after
# `dvc repro export` (or `dvc pull`).
#   docker build -f docker/serve.Dockerfile -t finsent-serve .
#   docker run --rm -p 8000:8000 finsent-serve
#   docker run --rm -p 8000:8000 -e FINSENT_SERVE_MODEL_THREADS=0 finsent-serve
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# nginx from Debian's packages: it listens on the port and passes requests to the API on a Unix socket.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The serve extra's pinned packages (ONNX Runtime, tokenizers, FastAPI, uvicorn, ...), then the package
# alone: no training stack.
COPY requirements-serve.txt .
RUN pip install -r requirements-serve.txt

COPY pyproject.toml README.md MANIFEST.in ./
COPY src/ src/
RUN pip install --no-deps .

# exported/ holds the ONNX models and the tokenizer; the server hashes its files for the model version.
# No params.yaml: the settings are FINSENT_SERVE_* variables (docs/serving.md), `docker run -e` to change.
COPY exported/ exported/
ENV FINSENT_SERVE_FRONT=nginx \
    FINSENT_SERVE_HOST=0.0.0.0 \
    FINSENT_SERVE_PORT=8000

RUN useradd --system --no-create-home --uid 10001 finsent
USER 10001
EXPOSE 8000
# On the port nginx listens on, FINSENT_SERVE_PORT (`docker run -e` may change it).
HEALTHCHECK --interval=30s --timeout=3s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['FINSENT_SERVE_PORT'] + '/readyz', timeout=2)"]
# finsent-serve runs nginx (and stops it). SIGTERM (docker stop) gives the requests in flight
# FINSENT_SERVE_SHUTDOWN_TIMEOUT_S (5 s) to be answered, nginx answering new ones with a 503 meanwhile;
# those still running then get a 503 with Retry-After, nginx gets 1 s to send the last answers, and
# the server exits: within docker stop's 10 s, after which Docker kills it.
CMD ["finsent-serve"]
