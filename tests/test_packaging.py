"""Where the code finds its migrations, its base model and its state: package data and the working
directory, never paths next to the checkout (scripts/check_wheel.sh checks an installed wheel)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from core.model.network import DEFAULT_WEIGHTS
from digitbot.settings import PROJECT_ROOT, SHIPPED_BASE_WEIGHTS, Settings
from storage.db import MIGRATIONS_DIR, alembic_config


def test_migrations_are_package_data_of_storage() -> None:
    import storage

    assert Path(storage.__file__).parent / "migrations" == MIGRATIONS_DIR
    assert (MIGRATIONS_DIR / "alembic.ini").is_file() and (MIGRATIONS_DIR / "env.py").is_file()
    assert sorted(MIGRATIONS_DIR.glob("versions/0001_*.py"))
    assert alembic_config().get_main_option("script_location") == str(MIGRATIONS_DIR)


def test_the_base_model_is_package_data_of_core() -> None:
    import core

    assert DEFAULT_WEIGHTS == SHIPPED_BASE_WEIGHTS == Path(core.__file__).parent / "weights" / "base.pt"
    assert DEFAULT_WEIGHTS.is_file()
    assert Settings(_env_file=None).base_weights == DEFAULT_WEIGHTS  # type: ignore[call-arg]


def test_package_data_globs_cover_every_shipped_file() -> None:
    """Every migration and the weights match pyproject's package-data (else the wheel lacks them)."""
    package_data = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {"storage": [p for p in MIGRATIONS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts],
               "core": [DEFAULT_WEIGHTS]}
    for package, files in shipped.items():
        root = PROJECT_ROOT / package
        for path in files:
            relative = path.relative_to(root)
            assert any(relative.match(pattern) and len(relative.parts) == len(Path(pattern).parts)
                       for pattern in package_data[package]), f"{package}/{relative} is not package data"


def test_state_lives_under_the_data_dir_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGITBOT_DATA_DIR", raising=False)
    monkeypatch.delenv("DIGITBOT_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.data_dir == Path("var")
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'var' / 'digitbot.db'}"
    monkeypatch.setenv("DIGITBOT_DATA_DIR", str(tmp_path / "state"))
    assert Settings(_env_file=None).resolved_database_url == (  # type: ignore[call-arg]
        f"sqlite:///{tmp_path / 'state' / 'digitbot.db'}")
