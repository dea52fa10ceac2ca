# The Python workers (workers/): the example and document blocks, connectors, triggers and
# the ONNX model worker. Build from the repository root:
#
#   docker build -f deploy/docker/worker.Dockerfile -t tideflow-worker .
#
# For the model worker on NVIDIA GPUs, build on a CUDA runtime base with onnxruntime's GPU
# wheel (its CUDA and cuDNN major versions must match the base's):
#
#   docker build -f deploy/docker/worker.Dockerfile -t tideflow-worker:gpu \
#     --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg ONNXRUNTIME=onnxruntime-gpu .
#
# Dependencies are pinned by constraints.txt, as in `make setup`.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG ONNXRUNTIME=onnxruntime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 PATH=/opt/tideflow/bin:$PATH
# A CUDA base has no Python of its own: add 3.11 (a python: base has it already).
RUN if ! command -v python3.11 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /app
COPY constraints.txt requirements-workers.txt ./
COPY sdk_python/ sdk_python/
COPY workers/ workers/
RUN python3.11 -m venv /opt/tideflow \
 && sed -i "s/^onnxruntime$/${ONNXRUNTIME}/" requirements-workers.txt \
 && PIP_CONSTRAINT=/app/constraints.txt /opt/tideflow/bin/pip install ./sdk_python \
      -r requirements-workers.txt
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin tideflow \
 && mkdir -p /app/.tideflow && chown 10001 /app/.tideflow
USER 10001
ENTRYPOINT ["python", "-m"]
CMD ["workers.python_example", "--address", "tideflow-frontend:7233"]
