"""checkov, offline: the one runner for both the CloudFormation templates (ops.infra.checks) and the rendered
Kustomize overlays (ops.k8s.policies' `checkov` policy).

On Kubernetes objects an accepted finding is a `checkov.io/skip<N>: <CHECK>=<reason>` annotation on the object it
excuses, so the reason sits next to the object; `scan_objects` reports a skip without a reason as a finding.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ops import core

# What checkov writes as the comment of an annotation skip that gives no reason.
NO_REASON = "No comment provided"
SKIP_ANNOTATION_PREFIX = "checkov.io/skip"


@dataclass(frozen=True)
class Finding:
    """One check on one resource: 'CKV_K8S_22 DaemonSet.kube-system.dcgm-exporter'."""

    check_id: str
    resource: str
    name: str = ""
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.check_id} {self.resource}"


@dataclass
class Results:
    passed: list[Finding] = field(default_factory=list)
    failed: list[Finding] = field(default_factory=list)
    skipped: list[Finding] = field(default_factory=list)


def tool(name: str) -> str:
    """A console script of this environment (cfn-lint, checkov), next to the running interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else name


def offline_env() -> dict[str, str]:
    """checkov phones home for guideline links and version checks; here nothing may leave the machine."""
    env = dict(os.environ)
    env.update({"BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false", "ANONYMOUS_TELEMETRY": "false"})
    return env


def run(framework: str, files: Sequence[Path], skip_checks: Sequence[str] = ()) -> Results:
    """checkov's `framework` checks over `files`, offline, as passed / failed / skipped findings."""
    argv = [tool("checkov"), "--framework", framework, "--output", "json", "--skip-download", "--compact"]
    for f in files:
        argv += ["--file", str(f)]
    if skip_checks:
        argv += ["--skip-check", ",".join(skip_checks)]
    proc = core.run(argv, timeout=900, env=offline_env(), ok_codes=range(256), effect=False)
    if not proc.stdout.strip().startswith(("{", "[")):
        raise RuntimeError(f"checkov gave no JSON (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    data = json.loads(proc.stdout)
    results = Results()
    for report in data if isinstance(data, list) else [data]:
        for bucket, out in (
            ("passed_checks", results.passed),
            ("failed_checks", results.failed),
            ("skipped_checks", results.skipped),
        ):
            for r in report.get("results", {}).get(bucket, []):
                reason = str((r.get("check_result") or {}).get("suppress_comment") or "")
                out.append(Finding(r["check_id"], r["resource"], r.get("check_name", ""), reason))
    return results


def scan_objects(objects: Sequence[dict[str, Any]]) -> Results:
    """checkov's Kubernetes checks over rendered objects; a skip annotation without a reason counts as failed."""
    text = yaml.safe_dump_all(list(objects), sort_keys=True)
    return _scan_text(hashlib.sha256(text.encode()).hexdigest(), text)


@functools.lru_cache(maxsize=32)
def _scan_text(digest: str, text: str) -> Results:
    """One checkov run per distinct render (the tests and `manifests.validate` ask about the same ones)."""
    with tempfile.TemporaryDirectory(prefix="checkov-") as tmp:
        path = Path(tmp) / f"{digest[:12]}.yaml"
        path.write_text(text)
        results = run("kubernetes", [path])
    unexplained = [f for f in results.skipped if not f.reason.strip() or f.reason.strip() == NO_REASON]
    results.failed += [Finding(f.check_id, f.resource, "skipped without a reason", "") for f in unexplained]
    return results
