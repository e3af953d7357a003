#!/usr/bin/env bash
# Install a digitbot wheel into a virtual environment: first torch and torchvision at the exact versions
# the wheel pins (from TORCH_INDEX_URL when set, e.g. the PyTorch CPU index, so no CUDA build comes with
# them), then the wheel with its other dependencies from the default index. The Dockerfile's install step;
# scripts/check_wheel.sh (CI) installs its fresh venv with it too, so CI runs exactly this code.
# Usage: [TORCH_INDEX_URL=URL] bash scripts/install_app.sh VENV WHEEL [PYTHON]   (PYTHON creates VENV if missing)
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: [TORCH_INDEX_URL=URL] $0 VENV WHEEL [PYTHON]" >&2
    exit 2
fi
venv=$1
wheel=$2
python=${3:-python3}
[[ -f $wheel ]] || { echo "install_app: no wheel at $wheel" >&2; exit 2; }
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"

pip_install() {
    # This machine's pip config may name local folders that another one lacks; pip warns about each.
    "$venv/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither" || true; }
}

# torch/torchvision requirements as the wheel's metadata pins them (pyproject.toml: "torch==X").
mapfile -t pins < <("$venv/bin/python" - "$wheel" <<'PY'
import sys
import zipfile
from email.parser import Parser

wheel = zipfile.ZipFile(sys.argv[1])
metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
for requirement in Parser().parsestr(wheel.read(metadata).decode()).get_all("Requires-Dist") or []:
    name = requirement.split("==")[0].split(">")[0].split("<")[0].strip().lower()
    if name in ("torch", "torchvision") and ";" not in requirement:
        print(requirement.replace(" ", ""))
PY
)
if [[ ${#pins[@]} -ne 2 || "${pins[*]}" != *"torch=="*"torchvision=="* ]]; then
    echo "install_app: expected torch==X and torchvision==Y pins in $wheel, found: ${pins[*]:-none}" >&2
    exit 1
fi

index=()
if [[ -n ${TORCH_INDEX_URL:-} ]]; then
    index=(--index-url "$TORCH_INDEX_URL")
fi
echo "install_app: ${pins[*]} ${TORCH_INDEX_URL:+from $TORCH_INDEX_URL}"
pip_install "${index[@]}" "${pins[@]}"
echo "install_app: $(basename "$wheel") and its dependencies"
pip_install "$wheel"
"$venv/bin/python" -m pip check --disable-pip-version-check 2>&1 | { grep -v "is ignored: it is neither" || true; }
"$venv/bin/python" -c 'import torch, torchvision, digitbot.cli, bot.app, worker.celery_app; print("install_app: torch", torch.__version__, "torchvision", torchvision.__version__)'
