"""scripts/dependency_audit.py: a run that audited nothing is reported as NOT AUDITED, never as a pass."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "dependency_audit.py"


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dependency_audit", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _skipped(name: str) -> dict[str, object]:
    return {"name": name, "version": "1.0",
            "skip_reason": f"Dependency not found on PyPI and could not be audited: {name}"}


def test_nothing_audited_is_not_a_pass(audit: ModuleType) -> None:
    verdict = audit.summarize([_skipped(f"p{i}") for i in range(123)])
    assert verdict.status == audit.NOT_AUDITED
    assert verdict.lines[0].startswith("dependency audit: 0 of 123 packages audited, 123 not audited")
    assert "NOT AUDITED" in verdict.lines[-1]
    assert audit.exit_status(verdict, allow_unaudited=False) == 2
    assert audit.exit_status(verdict, allow_unaudited=True) == 0  # CI: said plainly, not failed


def test_no_report_is_not_a_pass(audit: ModuleType) -> None:
    verdict = audit.summarize(None, problem="pip-audit produced no report")
    assert verdict.status == audit.NOT_AUDITED
    assert verdict.lines == ["dependency audit: NOT AUDITED, 0 packages checked: pip-audit produced no report"]


def test_audited_packages_pass_and_the_unaudited_are_named(audit: ModuleType) -> None:
    verdict = audit.summarize([{"name": "numpy", "version": "2.1.0", "vulns": []}, _skipped("torch")])
    assert verdict.status == audit.PASSED
    assert verdict.lines[0].startswith("dependency audit: 1 of 2 packages audited, 1 not audited")
    assert verdict.lines[1] == "  not audited: torch 1.0"


def test_a_vulnerability_fails_even_when_unaudited_is_allowed(audit: ModuleType) -> None:
    vuln = {"id": "GHSA-xxxx", "fix_versions": ["2.0"]}
    verdict = audit.summarize([{"name": "pillow", "version": "1.0", "vulns": [vuln]}])
    assert verdict.status == audit.VULNERABLE
    assert "  VULNERABLE pillow 1.0: GHSA-xxxx (fixed in: 2.0)" in verdict.lines
    assert audit.exit_status(verdict, allow_unaudited=True) == 1
