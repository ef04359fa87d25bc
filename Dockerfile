# The modelplex image: the router, the replica and the launcher, with the example deployments.
# Build from the repository root:   docker build -t modelplex:latest .
# Put your own deployment in the image (COPY it and install its requirements below), or mount
# it and set PYTHONPATH; the cluster config comes from a ConfigMap (deploy/kubernetes).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY common ./common
COPY replica ./replica
COPY router ./router
COPY examples ./examples
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app modelplex \
    && mkdir -p /app/examples/models && chown -R modelplex /app/examples

USER 10001
EXPOSE 8000 9000
# The router by default; a replica runs `python -m replica ...` (see deploy/kubernetes).
CMD ["python", "-m", "router", "--config", "/etc/modelplex/cluster.yaml"]
