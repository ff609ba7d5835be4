# One image for the API and the workers. Dependencies are installed from requirements.lock (exact pins);
# torch is the default PyPI build (CUDA-enabled, also runs on CPU), so the same image serves GPU workers.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LEARNGENE_DATA_DIR=/data
WORKDIR /app
# builtin:fashion-mnist (and the seed learngenes' evaluation) read Debian's packaged Fashion-MNIST.
RUN apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist && rm -rf /var/lib/apt/lists/*
COPY requirements.lock pyproject.toml README.md ./
# Install the pinned dependencies first so code changes do not invalidate this layer.
RUN pip install --upgrade "pip>=24" && \
    grep -v '^#' requirements.lock \
      | grep -v -i -E '^(pytest|iniconfig|pluggy|moto|flask|werkzeug|blinker|itsdangerous|responses|xmltodict|py-partiql-parser)' \
      > /tmp/runtime.lock && \
    pip install -r /tmp/runtime.lock
COPY engine ./engine
COPY service ./service
COPY worker ./worker
# The client package: the `learngene` command starts there and hands serve/worker to service.cli.
COPY learngene ./learngene
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-deps -c requirements.lock . && useradd --create-home learngene && mkdir -p /data && chown learngene /data
USER learngene
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz').status==200 else 1)"
CMD ["learngene", "serve", "--host", "0.0.0.0", "--port", "8000"]
