# The Tideflow server: one image for every role (frontend, history, matching), the schema tool
# and tidectl. Build from the repository root:
#
#   docker build -f deploy/docker/server.Dockerfile -t tideflow-server .
#
# Dependencies are pinned by constraints.txt, as in `make setup`.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY constraints.txt ./
COPY sdk_python/ sdk_python/
COPY services/ services/
RUN python -m venv /opt/tideflow \
 && PIP_CONSTRAINT=/src/constraints.txt /opt/tideflow/bin/pip install './sdk_python[cli]' ./services

FROM python:3.11-slim
ENV PATH=/opt/tideflow/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/tideflow /opt/tideflow
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin tideflow
USER 10001
# frontend, history, matching; Prometheus metrics when telemetry.metrics.prometheus_port is set.
EXPOSE 7233 7234 7235 9464
ENTRYPOINT ["tideflow-server"]
CMD ["start", "--config", "/etc/tideflow/tideflow.yaml"]
