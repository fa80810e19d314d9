# The HTTP API on the exported int8 model: build after `dvc repro export` (or `dvc pull`).
#   docker build -f docker/serve.Dockerfile -t finsent-serve .
#   docker run --rm -p 8000:8000 finsent-serve
#   docker run --rm -p 8000:8000 -e FINSENT_SERVE_MODEL_THREADS=0 finsent-serve
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

WORKDIR /app
COPY requirements.txt .
# The CPU build of torch (the package imports it for the pytorch backend), then the pinned rest.
RUN grep '^torch==' requirements.txt \
        | xargs pip install --index-url https://download.pytorch.org/whl/cpu \
    && pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY src/ src/
RUN pip install --no-deps .

# exported/ holds the ONNX models and the tokenizer; the server hashes its files for the model version.
# No params.yaml: the settings are FINSENT_SERVE_* variables (docs/serving.md), `docker run -e` to change.
COPY exported/ exported/
ENV FINSENT_SERVE_HOST=0.0.0.0 \
    FINSENT_SERVE_PORT=8000

RUN useradd --system --no-create-home --uid 10001 finsent
USER 10001
EXPOSE 8000
# On the port the server listens on, FINSENT_SERVE_PORT (`docker run -e` may change it).
HEALTHCHECK --interval=30s --timeout=3s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['FINSENT_SERVE_PORT'] + '/readyz', timeout=2)"]
# SIGTERM (docker stop) stops accepting connections and gives the requests in flight
# FINSENT_SERVE_SHUTDOWN_TIMEOUT_S (5 s) to be answered; those still running then get a 503 with
# Retry-After, the model run under way ends, and the server exits: within docker stop's 10 s, after
# which Docker kills it.
CMD ["finsent-serve"]
