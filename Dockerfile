# imgcls: the SageMaker Image Classification (MXNet) algorithm, as a training and serving image.
#
#   docker build -t imgcls .                                  GPU (CUDA 11.7), train and serve
#   docker build --build-arg VARIANT=cpu -t imgcls:cpu .      CPU only, e.g. inference-only hosts
#   --build-arg PRETRAINED_DEPTHS="18 50"                     bake fewer ImageNet weights ("" = none)
#
# Layout: /opt/imgcls/bin (train, serve; on PATH), /opt/imgcls/src (the imgcls package),
# /opt/imgcls/pretrained (ImageNet weights), /opt/venv (the dependencies), /opt/python (CPython).

ARG VARIANT=gpu
ARG PYTHON_VERSION=3.11.14
ARG UV_VERSION=0.13.8
# mxnet-cu117==1.9.1 links, and does not bundle, the CUDA 11.7 runtime, cuBLAS, cuFFT, cuRAND,
# cuSOLVER and cuSPARSE 11, NVRTC and cuDNN 8: this image carries exactly those. Should the tag
# ever be withdrawn, another CUDA 11.2-11.8 cuDNN 8 runtime image (same library names) will do.
ARG CUDA_IMAGE=nvidia/cuda:11.7.1-cudnn8-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS base-gpu
ENV IMGCLS_MXNET=mxnet-cu117

FROM ubuntu:22.04 AS base-cpu
ENV IMGCLS_MXNET=mxnet

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# What every stage shares: MXNet's own system libraries (OpenMP, quadmath) and CA certificates.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS system
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# hadolint ignore=DL3008
RUN apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates libgomp1 libquadmath0; \
    rm -rf /var/lib/apt/lists/*

# CPython (python-build-standalone, through uv: >= 3.11.4 for tarfile's extraction filters) and
# an empty virtual environment.
FROM system AS python
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_NO_CACHE=1 UV_LINK_MODE=copy VIRTUAL_ENV=/opt/venv
RUN uv python install --no-bin "${PYTHON_VERSION}"; \
    uv venv --python "${PYTHON_VERSION}" "${VIRTUAL_ENV}"

# ImageNet weights for use_pretrained_model=1, from the Gluon model zoo, checked against its
# SHA-1s. imgcls/model/pretrained.py names the files; it imports nothing but errors.py here.
FROM python AS weights
ARG PRETRAINED_DEPTHS="18 34 50 101 152"
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
WORKDIR /opt/imgcls/pretrained
COPY src/imgcls /tmp/src/imgcls
RUN if [ -n "${PRETRAINED_DEPTHS}" ]; then \
      PYTHONPATH=/tmp/src "${VIRTUAL_ENV}/bin/python" -m imgcls.model.pretrained ${PRETRAINED_DEPTHS} > /tmp/manifest; \
    else \
      : > /tmp/manifest; \
    fi; \
    while read -r url sha1 file; do \
      "${VIRTUAL_ENV}/bin/python" -c 'import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])' "${url}" /tmp/weights.zip; \
      "${VIRTUAL_ENV}/bin/python" -m zipfile -e /tmp/weights.zip .; \
      echo "${sha1}  ${file}" | sha1sum -c -; \
      rm /tmp/weights.zip; \
    done < /tmp/manifest

# The dependencies, pinned by pyproject.toml alone. The GPU variant swaps the mxnet distribution
# for mxnet-cu117 at the same version (one line rewritten, checked).
# imgcls itself is not installed here but copied to /opt/imgcls/src, which a .pth file adds to
# the environment's path (scripts/train and scripts/serve also find it next to themselves).
FROM python AS deps
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
WORKDIR /build
COPY pyproject.toml ./
RUN "${VIRTUAL_ENV}/bin/python" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' | sed "s/^mxnet==/${IMGCLS_MXNET}==/" > requirements.txt; \
    grep -q "^${IMGCLS_MXNET}==" requirements.txt; \
    uv pip install -r requirements.txt; \
    echo /opt/imgcls/src > "${VIRTUAL_ENV}/lib/python3.11/site-packages/imgcls.pth"

FROM system AS runtime
COPY --from=python /opt/python /opt/python
COPY --from=weights /opt/imgcls/pretrained /opt/imgcls/pretrained
COPY --from=deps /opt/venv /opt/venv
COPY scripts/train scripts/serve /opt/imgcls/bin/
COPY src/ /opt/imgcls/src/
ENV PATH=/opt/imgcls/bin:/opt/venv/bin:$PATH \
    IMGCLS_PRETRAINED_DIR=/opt/imgcls/pretrained \
    IMGCLS_CACHE_DIR=/opt/imgcls/cache \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Bytecode for everything a job imports: uv installs none and PYTHONDONTWRITEBYTECODE keeps
# Python from writing it, so without this every process compiled MXNet, NumPy and the rest from
# source (import mxnet, cv2, numpy: 6.8-7.7 s against 2.3-2.9 s on a 2-core machine). Then
# MXNet's operator cache (imgcls/mxnet_import.py), which the GPU variant writes on first use
# instead where libmxnet.so cannot load without a GPU driver at build time.
RUN python -m compileall -q -j 0 /opt/venv /opt/imgcls/src "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"; \
    python -c 'from imgcls.mxnet_import import import_mxnet; import_mxnet()' \
      || echo "MXNet does not load here: its operator cache is written on first use"
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
EXPOSE 8080
WORKDIR /opt/ml
