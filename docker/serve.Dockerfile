# The HTTP API on the exported int8 model: build after `dvc repro export` (or `dvc pull`).
#   docker build -f docker/serve.Dockerfile -t finsent-serve .
#   docker run --rm -p 8000:8000 finsent-serve
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

# params.yaml holds the limits; dvc.lock the model's version; exported/ the ONNX models and tokenizer.
COPY params.yaml dvc.lock ./
COPY exported/ exported/

RUN useradd --system --no-create-home --uid 10001 finsent
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz')"]
CMD ["finsent-serve", "--host", "0.0.0.0", "--port", "8000"]
