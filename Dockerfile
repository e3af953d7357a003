# digitbot: the bot (`digitbot run`), the one-off migration (`digitbot db upgrade`) and the Celery
# fine-tune workers (`digitbot worker --celery`) all run from this one image; compose.yaml wires them.
#   docker build -t digitbot .                                   # CPU torch from the PyTorch CPU index
#   docker build --build-arg TORCH_INDEX_URL= -t digitbot:gpu .  # empty: torch from the default index (CUDA build)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Stage 1: the wheel (package data included: migrations, core/weights/base.pt).
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --no-deps --disable-pip-version-check -w /dist .

# Stage 2: a venv with CPU torch pinned as in pyproject.toml, installed by scripts/install_app.sh (CI runs
# the same script in scripts/check_wheel.sh).
FROM ${PYTHON_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/digitbot/bin:$PATH
COPY scripts/install_app.sh /tmp/install_app.sh
COPY --from=wheel /dist/ /tmp/dist/
RUN TORCH_INDEX_URL="$TORCH_INDEX_URL" bash /tmp/install_app.sh /opt/digitbot /tmp/dist/digitbot-*.whl python3 \
    && rm -rf /tmp/dist /tmp/install_app.sh \
    && groupadd --system --gid 10001 digitbot \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/digitbot --create-home digitbot \
    && mkdir -p /var/lib/digitbot \
    && chown digitbot:digitbot /var/lib/digitbot

# State (the SQLite database when DIGITBOT_DATABASE_URL is unset, personal weights with DIGITBOT_WEIGHTS_DIR).
# The health server binds every interface inside the container (the default 127.0.0.1 would be unreachable
# from outside); publish 8090 only to trusted networks. 8443: the webhook, behind a TLS reverse proxy.
ENV DIGITBOT_DATA_DIR=/var/lib/digitbot \
    DIGITBOT_HEALTH_LISTEN=0.0.0.0 \
    DIGITBOT_HEALTH_PORT=8090 \
    DIGITBOT_WEBHOOK_LISTEN=0.0.0.0 \
    DIGITBOT_WEBHOOK_PORT=8443 \
    XDG_CACHE_HOME=/var/lib/digitbot/cache
VOLUME ["/var/lib/digitbot"]
WORKDIR /var/lib/digitbot
# The digitbot user created above, by number (a non-root check can see it without /etc/passwd).
USER 10001:10001
EXPOSE 8090 8443

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('DIGITBOT_HEALTH_PORT', '8090')}/healthz\", timeout=4)"]

ENTRYPOINT ["digitbot"]
CMD ["run"]
