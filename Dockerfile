# The model server on a CPU: docker compose up (see docker-compose.yml), or
#   docker build -t maskrcnn-finetune . && docker run -p 8080:5000 -v "$PWD/outputs/demo/model:/models/model:ro" maskrcnn-finetune
# The model folder (scripts/train.py's --output-dir) is mounted at /models/model; uploads and results go to /data.
FROM python:3.11-slim

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=5000

WORKDIR /app
# torch's CPU-only wheels: a fraction of the CUDA build's size
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY requirements*.txt pyproject.toml README.md ./
COPY maskrcnn_finetune ./maskrcnn_finetune
COPY rest_api_flask ./rest_api_flask
RUN pip install . \
    && useradd --create-home --uid 10001 kit \
    && mkdir -p /data /models \
    && chown kit /data

USER 10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health', timeout=4)"]
CMD ["python", "-m", "rest_api_flask", "--model-dir", "/models/model", "--upload-folder", "/data/uploads", "--output-folder", "/data/outputs", "--infer-with-cpu"]
