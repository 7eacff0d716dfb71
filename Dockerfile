# One image for all three Foresight services; the command picks the service:
#   docker run foresight:0.1.0 foresight-trainer     (default)
#   docker run foresight:0.1.0 foresight-scorer
#   docker run foresight:0.1.0 foresight-segmenter
# docker-compose.yml builds it once and runs it three times.
#
# The base is pinned to an exact patch release of Python and Debian so a
# rebuild gives the same interpreter and system libraries; bump both stages
# together (the venv is tied to the interpreter it was built with).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

# hnswlib is published as source only: it needs a C++ compiler. The compiler
# stays in this stage and never reaches the runtime image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/foresight
ENV PATH=/opt/foresight/bin:$PATH

WORKDIR /src
# Dependencies first, from pyproject.toml alone, so editing the code does not
# reinstall ~1 GB of wheels: this layer changes only when the pins change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install --upgrade pip \
 && pip install -r requirements.txt

# Then the package itself (no deps: they are all installed and pinned above).
COPY foresight ./foresight
COPY services ./services
RUN pip install --no-deps . \
 && test -x /opt/foresight/bin/foresight-trainer \
 && test -x /opt/foresight/bin/foresight-scorer \
 && test -x /opt/foresight/bin/foresight-segmenter

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: LightGBM's OpenMP runtime (its wheel links the system one).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid so the named volume's files have a stable owner across
# rebuilds; the services never need root.
RUN groupadd --system --gid 10001 foresight \
 && useradd --system --uid 10001 --gid foresight --home-dir /home/foresight --create-home foresight \
 && mkdir -p /data /data/imports \
 && chown -R foresight:foresight /data

COPY --from=builder /opt/foresight /opt/foresight
# Fail the build, not the first start, when a native library is missing.
RUN /opt/foresight/bin/python -c "import hnswlib, lightgbm, numba, onnxruntime, psycopg, foresight.healthcheck"

# Inside a container the server must listen on every interface, not loopback;
# the event store, artifacts and indexes live under /data (mount a volume), and so
# does the compiled TreeSHAP loop (Numba's cache: compiled on the first batch run).
ENV PATH=/opt/foresight/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FORESIGHT_HOST=0.0.0.0 \
    FORESIGHT_DATA_DIR=/data \
    FORESIGHT_IMPORT_ROOT=/data/imports \
    NUMBA_CACHE_DIR=/data/cache/numba

USER foresight
WORKDIR /home/foresight
VOLUME ["/data"]
EXPOSE 50051 50052 50053

# grpc.health.v1 against the local server: SERVING only once models/indexes
# are loaded, NOT_SERVING during graceful shutdown. Without a service name
# the check uses FORESIGHT_PORT or the FORESIGHT_<SERVICE>_PORT set for this
# container, else probes the three default ports (a container runs one
# service); compose names the service explicitly.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-m", "foresight.healthcheck"]

# SIGTERM starts the graceful stop (FORESIGHT_GRACE_SECONDS); exec form keeps
# the service as the process that receives it.
STOPSIGNAL SIGTERM
CMD ["foresight-trainer"]
