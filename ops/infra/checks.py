"""Offline checks of the synthesized templates: cfn-lint and checkov, with every accepted finding and its reason."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ops import checkov as ops_checkov
from ops import core

# cfn-lint rules ignored on purpose (also in docs/infra.md).
CFN_LINT_IGNORED = {
    "W3010": "the subnets' zones are hard-coded on purpose: they are the `zones` of manifests/nodegroups.yaml, "
    "which the node groups, the simulator and the topology spread all assume",
    "W3005": "CDK's EKS cluster states DependsOn for the subnets it also Refs; redundant, harmless, not ours to edit",
}
# checkov checks accepted as failing, with the reason (also in docs/infra.md). Empty: none fail today.
CHECKOV_ACCEPTED: dict[str, str] = {}


@dataclass
class CheckReport:
    """What cfn-lint and checkov said about the templates."""

    templates: list[Path]
    cfn_lint: list[str] = field(default_factory=list)
    checkov_passed: list[str] = field(default_factory=list)
    checkov_failed: list[str] = field(default_factory=list)
    checkov_skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.cfn_lint and not self.checkov_failed


def cfn_lint(templates: Sequence[Path]) -> list[str]:
    """cfn-lint findings (errors and warnings) as 'RULE file:line message', the ignored rules left out."""
    cfn_lint = ops_checkov.tool("cfn-lint")
    proc = core.run(
        [cfn_lint, "--format", "json", "--ignore-checks", *CFN_LINT_IGNORED, "--", *map(str, templates)],
        timeout=600, ok_codes=range(256), effect=False,
    )  # fmt: skip
    if proc.returncode not in (0, 2, 4, 6, 8, 10, 12, 14) and not proc.stdout.strip():
        raise RuntimeError(f"cfn-lint failed (exit {proc.returncode}): {proc.stderr.strip()}")
    findings = json.loads(proc.stdout or "[]")
    return [
        f"{f['Rule']['Id']} {Path(f['Filename']).name}:{f['Location']['Start']['LineNumber']} {f['Message']}"
        for f in findings
    ]


def checkov(templates: Sequence[Path]) -> tuple[list[str], list[str], list[str]]:
    """(passed, failed, skipped) checkov CloudFormation checks as 'CHECK resource' strings, offline."""
    results = ops_checkov.run("cloudformation", templates, list(CHECKOV_ACCEPTED))
    return [str(f) for f in results.passed], [str(f) for f in results.failed], [str(f) for f in results.skipped]


def check(templates: Sequence[Path]) -> CheckReport:
    """cfn-lint and checkov over the templates."""
    report = CheckReport(list(templates))
    report.cfn_lint = cfn_lint(templates)
    report.checkov_passed, report.checkov_failed, report.checkov_skipped = checkov(templates)
    return report


def summary(report: CheckReport) -> list[str]:
    """The report as lines: counts, every cfn-lint finding and every failed checkov check."""
    return [
        f"cfn-lint: {len(report.cfn_lint)} finding(s) (ignored rules: {', '.join(CFN_LINT_IGNORED)})",
        *(f"  {line}" for line in report.cfn_lint),
        f"checkov: {len(report.checkov_passed)} passed, {len(report.checkov_failed)} failed, "
        f"{len(report.checkov_skipped)} skipped (accepted: {', '.join(CHECKOV_ACCEPTED) or 'none'})",
        *(f"  FAILED {line}" for line in report.checkov_failed),
    ]
