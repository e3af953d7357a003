#!/usr/bin/env bash
# Build the wheel, install it in a fresh venv outside the checkout, and use it from there: migrate an
# SQLite database (`digitbot db upgrade`) and read a generated PNG (`digitbot predict`). Catches package
# data that the wheel lacks (storage/migrations/, core/weights/base.pt, ink.pt) and state written next to the code.
# The install is scripts/install_app.sh, the same step as the Dockerfile's (TORCH_INDEX_URL: where torch comes from).
# Usage: bash scripts/check_wheel.sh [PYTHON]   (default python3; about 1-2 min with torch on the local disk)
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
python=${1:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "check_wheel: building the wheel"
# From a copy of the working tree's files (tracked and not ignored): setuptools builds in place, and a
# stale build/ folder in the checkout would put files in the wheel that the tree no longer has.
mkdir -p "$work/src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do if [[ -e $f ]]; then printf '%s\0' "$f"; fi; done \
    | tar --null -T - -cf - | tar -xf - -C "$work/src"
"$python" -m pip wheel -q --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/digitbot-*.whl)
"$python" - "$wheel" <<'EOF'
import sys
import zipfile

names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = {"core/weights/base.pt", "core/weights/ink.pt", "storage/migrations/alembic.ini", "storage/migrations/env.py",
        "storage/migrations/script.py.mako", "storage/migrations/versions/0001_initial_schema.py",
        *(f"core/{room}/__init__.py" for room in ("vision", "model", "personal", "sim"))}
missing = sorted(need - names)
stray = sorted(n for n in names if n.startswith(("var/", "weights/", "migrations/", "tests/")))
assert not missing and not stray, f"wheel lacks {missing}, has stray {stray}"
EOF

echo "check_wheel: installing $(basename "$wheel") into a fresh venv with scripts/install_app.sh (the Dockerfile's install step)"
bash "$checkout/scripts/install_app.sh" "$work/venv" "$wheel" "$python"
"$work/venv/bin/pip" show -q digitbot >/dev/null  # the install above succeeded

# From a directory outside the checkout (not on sys.path), with no .env and no DIGITBOT_* overrides.
mkdir -p "$work/run"
cd "$work/run"
unset PYTHONPATH
while IFS= read -r name; do unset "$name"; done < <(env | sed -n 's/^\(DIGITBOT_[A-Z0-9_]*\)=.*/\1/p')
bin=$work/venv/bin
site=$("$bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

"$bin/python" - "$site" <<'EOF'
import sys
from pathlib import Path

import core.model.network
import core.vision.ink_net
import storage.db
from digitbot.settings import Settings

site = Path(sys.argv[1]).resolve()
for path in (storage.db.MIGRATIONS_DIR, core.model.network.DEFAULT_WEIGHTS, core.vision.ink_net.WEIGHTS,
             Settings().base_weights):
    assert path.resolve().is_relative_to(site) and path.exists(), f"{path} is not installed package data"
assert Settings().data_dir == Path("var"), Settings().data_dir
EOF

echo "check_wheel: digitbot db upgrade (an explicit URL, then the default under DIGITBOT_DATA_DIR)"
"$bin/digitbot" db upgrade --url "sqlite:///$work/run/explicit.db"
DIGITBOT_DATA_DIR="$work/state" "$bin/digitbot" db upgrade
"$bin/python" - "$work" <<'EOF'
import sqlite3
import sys

for db in (f"{sys.argv[1]}/run/explicit.db", f"{sys.argv[1]}/state/digitbot.db"):
    version = sqlite3.connect(db).execute("SELECT version_num FROM alembic_version").fetchone()
    assert version is not None, db
print("migrated to", version[0])
EOF

echo "check_wheel: digitbot predict on a generated PNG"
"$bin/python" - <<'EOF'
import cv2
import numpy as np

page = np.full((160, 320), 255, np.uint8)
cv2.putText(page, "47", (60, 120), cv2.FONT_HERSHEY_SIMPLEX, 4, 0, 12, cv2.LINE_AA)
cv2.imwrite("digits.png", page)
EOF
out=$("$bin/digitbot" predict --json digits.png)
echo "$out"
"$bin/python" -c 'import json, sys; r = json.loads(sys.argv[1]); assert r["digits"] and "error" not in r, r' "$out"

if [[ -e "$site/var" || -n "$(find "$site" -maxdepth 2 -name '*.db' -print -quit)" ]]; then
    echo "check_wheel: state was written into site-packages" >&2
    exit 1
fi
echo "check_wheel: OK"
