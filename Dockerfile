# The translation service, serving every model under models/ on port 8000.
#   CPU:  docker build -t mt . && docker run -p 8000:8000 mt
#   CUDA: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t mt:cuda . \
#           && docker run --gpus all -p 8000:8000 mt:cuda
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# PyTorch wheels bundle their CUDA libraries: the index picks the CPU or the CUDA build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mt ./mt
COPY app ./app
# the README's install command, with the wheel index of the chosen build and a non-editable install
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX}" && pip install .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    MT_HOST=0.0.0.0 MT_PORT=8000 MT_MODELS_DIR=/srv/models
RUN useradd --create-home --uid 10001 mt
COPY --from=build /opt/venv /opt/venv
COPY models /srv/models
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"MT_PORT\"]}/health', timeout=4)"]
CMD ["mt", "serve"]
