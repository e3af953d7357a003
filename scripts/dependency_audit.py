"""Dependency audit for CI (`make test`): pip-audit over requirements.lock (or the installed environment).

    python scripts/dependency_audit.py                                   # the installed environment
    python scripts/dependency_audit.py --requirements requirements.lock  # the hashed lock file (exact pins)
    python scripts/dependency_audit.py ... --allow-unaudited             # what `make test` runs

Exit status:
  0  every package was audited and none has a known vulnerability (not in IGNORED below);
  1  pip-audit reported a vulnerability that is not in IGNORED;
  2  NOT AUDITED: pip-audit did not finish, produced no report (advisory service unreachable?), or
     audited none of the packages. A run that checked nothing is not a pass. With --allow-unaudited
     this is printed just as plainly but exits 0, so an unreachable advisory service does not turn CI
     red; a reported vulnerability still fails.
Packages the service does not know (e.g. versions from a local wheel mirror) are listed by name as
"not audited", with the count of audited packages, every run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Advisory id -> why it is accepted (only when no fixed version exists; remove once one does).
IGNORED: dict[str, str] = {}
TIMEOUT_S = 180
PASSED, VULNERABLE, NOT_AUDITED = 0, 1, 2


@dataclass(frozen=True)
class Verdict:
    status: int  # PASSED, VULNERABLE or NOT_AUDITED
    lines: list[str] = field(default_factory=list)


def summarize(dependencies: Sequence[dict[str, Any]] | None, *, problem: str = "") -> Verdict:
    """The verdict on pip-audit's JSON ``dependencies`` (None: no report, ``problem`` says why)."""
    if dependencies is None:
        return Verdict(NOT_AUDITED, [f"dependency audit: NOT AUDITED, 0 packages checked: {problem}".rstrip(": ")])
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if "skip_reason" in d]
    audited = len(dependencies) - len(skipped)
    reasons = Counter(str(d["skip_reason"]).split(":")[0] for d in skipped)
    lines = [f"dependency audit: {audited} of {len(dependencies)} packages audited, {len(skipped)} not audited "
             f"({dict(reasons)}), {len(IGNORED)} advisories ignored with a reason"]
    if skipped:
        lines.append("  not audited: " + ", ".join(f"{d['name']} {d['version']}" if "version" in d else str(d["name"])
                                          for d in skipped))
    for dependency in vulnerable:
        for vuln in dependency["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fix available"
            lines.append(f"  VULNERABLE {dependency['name']} {dependency['version']}: {vuln['id']} "
                         f"(fixed in: {fixes})")
    if vulnerable:
        return Verdict(VULNERABLE, lines)
    if audited == 0:
        lines.append("dependency audit: NOT AUDITED: no package could be checked, so this is not a pass")
        return Verdict(NOT_AUDITED, lines)
    return Verdict(PASSED, lines)


def run_pip_audit(requirements: Path | None) -> Verdict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.json"
        command = [sys.executable, "-m", "pip_audit", "--progress-spinner", "off", "-f", "json", "-o", str(report)]
        if requirements is None:
            command += ["--skip-editable"]
        else:  # exact pins with hashes: audited as written, nothing installed or resolved
            command += ["-r", str(requirements), "--require-hashes", "--disable-pip"]
        for advisory in IGNORED:
            command += ["--ignore-vuln", advisory]
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            return summarize(None, problem=f"pip-audit did not finish ({error})")
        if not report.exists():
            return summarize(None, problem="pip-audit produced no report (advisory service unreachable?)\n"
                                           + run.stderr.strip()[-2000:])
        return summarize(json.loads(report.read_text())["dependencies"])


def exit_status(verdict: Verdict, *, allow_unaudited: bool) -> int:
    if verdict.status == NOT_AUDITED and allow_unaudited:
        return PASSED
    return verdict.status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requirements", type=Path, help="audit this hashed lock file instead of the environment")
    parser.add_argument("--allow-unaudited", action="store_true",
                        help="exit 0 (still saying NOT AUDITED) when nothing could be audited")
    args = parser.parse_args(argv)
    verdict = run_pip_audit(args.requirements)
    print("\n".join(verdict.lines))
    status = exit_status(verdict, allow_unaudited=args.allow_unaudited)
    if verdict.status == NOT_AUDITED and status == PASSED:
        print("dependency audit: not failing CI (--allow-unaudited); this run is no evidence of absence")
    return status


if __name__ == "__main__":
    sys.exit(main())
