"""Orphaned weight files (no model row refers to them) are removed after a grace period; files that
a row refers to, files younger than the grace period and anything outside the layout are kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from digitbot.settings import PROJECT_ROOT
from storage import repository as repo
from storage.db import session_factory

HOUR = 3600.0

# A process that writes a model version (the weights file) and is SIGKILLed before its commit.
KILLED_BEFORE_COMMIT = """
import os, signal, sys
from pathlib import Path
from storage import repository as repo
from storage.db import session_factory
factory = session_factory(sys.argv[1], weights_dir=Path(sys.argv[2]))
with factory.begin() as session:
    user = repo.get_or_create_user(session, telegram_id=int(sys.argv[3]))
    repo.add_model_version(session, user_id=user.id, parent_id=None, weights=b"doomed" * 100, metrics={})
    session.flush()
    print("written", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def files_factory(db_url: str, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    made = session_factory(db_url, weights_dir=tmp_path / "weights")
    yield made
    made.kw["bind"].dispose()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _add_version(factory: sessionmaker[Session], telegram_id: int, weights: bytes) -> tuple[int, int, str]:
    with factory.begin() as session:
        user = repo.get_or_create_user(session, telegram_id=telegram_id)
        version = repo.add_model_version(session, user_id=user.id, parent_id=None, weights=weights, metrics={})
        assert version.weights_path is not None
        return user.id, version.id, version.weights_path


def _sweep(factory: sessionmaker[Session], grace_s: float = HOUR) -> list[str]:
    with factory() as session:
        return repo.sweep_orphan_weights(session, grace_s=grace_s)


def test_process_killed_before_commit_leaves_an_orphan_that_the_sweep_removes(
        files_factory: sessionmaker[Session], db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "weights"
    user_id, version_id, kept = _add_version(files_factory, 7, b"kept" * 100)
    child = subprocess.run([sys.executable, "-c", KILLED_BEFORE_COMMIT, db_url, str(root), "8"],
                           cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert child.returncode == -signal.SIGKILL and "written" in child.stdout, child.stderr
    orphans = _files(root) - {kept}
    assert len(orphans) == 1  # the file is there, its row never committed
    (orphan,) = orphans
    with files_factory() as session:
        assert repo.get_user(session, telegram_id=8) is None

    assert _sweep(files_factory) == []  # young: could be a file whose commit is just coming
    assert _files(root) == {kept, orphan}

    for name in (kept, orphan):
        _age(root / name, 2 * HOUR)
    assert _sweep(files_factory) == [orphan]
    assert _files(root) == {kept}  # the file its row refers to stays, and still loads
    with files_factory() as session:
        assert repo.load_weights(session, user_id=user_id, version_id=version_id) == b"kept" * 100


def test_in_flight_write_temp_files_and_foreign_files(files_factory: sessionmaker[Session], tmp_path: Path) -> None:
    root = tmp_path / "weights"
    # A fine-tune saving its weights right now: the file is written, the transaction still open.
    with files_factory.begin() as writer:
        user = repo.get_or_create_user(writer, telegram_id=9)
        version = repo.add_model_version(writer, user_id=user.id, parent_id=None, weights=b"new" * 100, metrics={})
        assert version.weights_path is not None and (root / version.weights_path).exists()
        assert _sweep(files_factory) == []
        assert (root / version.weights_path).exists()
    with files_factory() as session:  # committed after the sweep: intact
        assert repo.load_weights(session, user_id=user.id, version_id=version.id) == b"new" * 100

    # A temporary file left by a write killed before its rename, and an empty user folder: orphans.
    stale_tmp = root / "31" / ".tmp-abc123_x.bin"
    stale_tmp.parent.mkdir(parents=True)
    stale_tmp.write_bytes(b"partial")
    _age(stale_tmp, 2 * HOUR)
    empty = root / "32"
    empty.mkdir()
    _age(empty, 2 * HOUR)
    # Files outside the layout are never touched, however old (e.g. weights_dir set to weights/).
    foreign = [root / "base.pt", root / "31" / "notes.txt", root / "backup" / "0123456789abcdef-0123456789ab.bin"]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        _age(path, 2 * HOUR)

    assert _sweep(files_factory) == ["31/.tmp-abc123_x.bin"]
    assert not stale_tmp.exists() and not empty.exists()
    assert all(path.exists() for path in foreign)
    assert (root / version.weights_path).exists()


def test_no_weights_dir_is_a_no_op(factory: sessionmaker[Session]) -> None:
    assert _sweep(factory, grace_s=0) == []
