"""cfn-lint and checkov pass on the synthesized templates, offline; and each really catches a planted mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.infra import checks, settings
from ops.infra.synth import Synthesized


@pytest.fixture(scope="module")
def template_paths(synthesized: Synthesized) -> list[Path]:
    return [synthesized.template(name) for name in synthesized.stacks]


def test_cfn_lint_is_clean(template_paths: list[Path]) -> None:
    assert checks.cfn_lint(template_paths) == []


def test_checkov_is_clean(template_paths: list[Path]) -> None:
    passed, failed, skipped = checks.checkov(template_paths)
    assert failed == []
    assert len(passed) > 50
    assert {s.split()[0] for s in skipped} <= set(checks.CHECKOV_ACCEPTED)


def _planted(synthesized: Synthesized, tmp_path: Path, edit: str) -> Path:
    template = json.loads(synthesized.template(settings.REGISTRY_STACK).read_text())
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::ECR::Repository":
            if edit == "scan":
                resource["Properties"]["ImageScanningConfiguration"] = {"ScanOnPush": False}
            else:
                resource["Properties"]["ImageTagMutability"] = "SOMETIMES"
    out = tmp_path / "planted.template.json"
    out.write_text(json.dumps(template))
    return out


def test_checkov_catches_a_repository_without_scanning(synthesized: Synthesized, tmp_path: Path) -> None:
    _, failed, _ = checks.checkov([_planted(synthesized, tmp_path, "scan")])
    assert any(f.startswith("CKV_AWS_163 AWS::ECR::Repository.") for f in failed), failed


def test_cfn_lint_catches_an_invalid_value(synthesized: Synthesized, tmp_path: Path) -> None:
    findings = checks.cfn_lint([_planted(synthesized, tmp_path, "mutability")])
    assert any(f.startswith("E3030 ") and "SOMETIMES" in f for f in findings), findings


def test_accepted_findings_have_reasons() -> None:
    for reasons in (checks.CFN_LINT_IGNORED, checks.CHECKOV_ACCEPTED):
        assert all(len(reason) > 40 for reason in reasons.values())
