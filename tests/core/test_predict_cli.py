"""The `digitbot predict` contract from DESIGN.md: one JSON object per image per line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core.model.data import load_mnist
from core.model.network import Checkpoint, load_base

HEAD_PREFIXES = ("conv3.", "bn3.", "fc1.", "fc2.")


def _row_photo(digits: list[np.ndarray]) -> np.ndarray:
    """Black ink on white paper, digits upscaled 3x and spaced apart."""
    canvas = np.full((140, 60 + 100 * len(digits)), 235, np.uint8)
    for i, digit in enumerate(digits):
        big = cv2.resize(digit, (84, 84), interpolation=cv2.INTER_CUBIC)
        region = canvas[28:112, 30 + 100 * i: 114 + 100 * i]
        np.minimum(region, 235 - (big.astype(np.int32) * 215 // 255).astype(np.uint8), out=region)
    return canvas


def _run(*args: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "digitbot.cli", "predict", "--json", *args],
                          capture_output=True, text=True, timeout=120)
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, mnist_dir) -> dict[str, Path]:
    images, _ = load_mnist(train=False, directory=mnist_dir)
    folder = tmp_path_factory.mktemp("photos")
    seven, two = images[0].numpy(), images[1].numpy()  # the test set starts 7, 2
    paths = {"row": folder / "row.png", "blank": folder / "blank.png", "corrupt": folder / "corrupt.jpg"}
    cv2.imwrite(str(paths["row"]), _row_photo([seven, two]))
    cv2.imwrite(str(paths["blank"]), np.full((200, 200), 230, np.uint8))
    paths["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return paths


def test_json_lines_contract(photos) -> None:
    row, blank, corrupt = _run(str(photos["row"]), str(photos["blank"]), str(photos["corrupt"]))
    assert row == {"path": str(photos["row"]), "digits": "72", "confidences": row["confidences"],
                   "sources": ["base", "base"]}
    assert len(row["confidences"]) == 2 and all(0.5 < c <= 1 for c in row["confidences"])
    assert blank["digits"] == "" and blank["error"] == "no_digit" and blank["confidences"] == []
    assert corrupt["digits"] == "" and corrupt["error"] == "not_an_image"


def test_missing_file_is_reported_not_raised(tmp_path) -> None:
    (record,) = _run(str(tmp_path / "nope.png"))
    assert record["digits"] == "" and record["error"].startswith("unreadable")


def test_user_model_answers_when_confident(photos, tmp_path) -> None:
    base = load_base()
    head = {k: v.clone() for k, v in base.state_dict.items() if k.startswith(HEAD_PREFIXES)}
    head["fc2.bias"] = torch.full((10,), -50.0)
    head["fc2.bias"][3] = 50.0  # a (silly) personal model that is sure everything is a 3
    Checkpoint(state_dict=head, meta={"temperature": 1.0, "threshold": 0.9}).save(tmp_path / "me.pt")
    (row,) = _run(str(photos["row"]), "--user-model", str(tmp_path / "me.pt"))
    assert row["digits"] == "33" and row["sources"] == ["personal", "personal"]


def test_explain_figure_written(photos, tmp_path) -> None:
    out = tmp_path / "explain.png"
    _run(str(photos["row"]), "--explain", str(out))
    assert cv2.imread(str(out)) is not None


def _run_text(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "digitbot.cli", "predict", *args],
                          capture_output=True, text=True, timeout=120)


def test_explain_says_where_each_figure_went(photos, tmp_path) -> None:
    out = tmp_path / "one.png"
    done = _run_text(str(photos["row"]), "--explain", str(out))
    assert f"{photos['row']}: explanation figure written to {out}" in done.stdout
    out = tmp_path / "many.png"
    done = _run_text(str(photos["row"]), str(photos["blank"]), "--explain", str(out))
    first, second = tmp_path / "many-1.png", tmp_path / "many-2.png"
    assert f"{photos['row']}: explanation figure written to {first}" in done.stdout
    assert f"{photos['blank']}: explanation figure written to {second}" in done.stdout
    assert cv2.imread(str(first)) is not None and cv2.imread(str(second)) is not None
    assert not out.exists()


def test_explain_skips_a_non_image_and_says_so(photos, tmp_path) -> None:
    out = tmp_path / "explain.png"
    done = _run_text(str(photos["corrupt"]), str(photos["row"]), str(tmp_path / "nope.png"), "--json",
                     "--explain", str(out))
    assert [json.loads(line)["path"] for line in done.stdout.splitlines()] == [
        str(photos["corrupt"]), str(photos["row"]), str(tmp_path / "nope.png")]  # stdout stays JSON lines
    assert f"{photos['corrupt']}: no explanation figure (not an image we can decode: not_an_image)" in done.stderr
    assert f"{tmp_path / 'nope.png'}: no explanation figure (the file could not be read)" in done.stderr
    assert f"{photos['row']}: explanation figure written to {tmp_path / 'explain-2.png'}" in done.stderr
    assert sorted(p.name for p in tmp_path.glob("explain*.png")) == ["explain-2.png"]


def test_the_base_model_comes_from_the_settings(photos, tmp_path: Path) -> None:
    """DIGITBOT_BASE_WEIGHTS reaches predict through digitbot.settings (core reads no environment)."""
    favour_three = Checkpoint(state_dict=dict(load_base().state_dict), meta={"temperature": 1.0})
    favour_three.state_dict["fc2.bias"] = torch.full((10,), -50.0)
    favour_three.state_dict["fc2.bias"][3] = 50.0
    favour_three.save(tmp_path / "threes.pt")
    done = subprocess.run([sys.executable, "-m", "digitbot.cli", "predict", "--json", str(photos["row"])],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DIGITBOT_BASE_WEIGHTS": str(tmp_path / "threes.pt")})
    assert set(json.loads(done.stdout)["digits"]) == {"3"}
