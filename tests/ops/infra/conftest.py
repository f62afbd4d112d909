"""One offline synth of every environment per session (about 30 s), shared by the infra tests."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Template

from ops.infra import settings
from ops.infra.synth import Synthesized, synth


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synth(list(settings.ENV_OVERLAYS), tmp_path_factory.mktemp("cdk") / "cdk.out")


@pytest.fixture(scope="session")
def templates(synthesized: Synthesized) -> dict[str, Template]:
    """Stack name -> aws_cdk.assertions Template."""
    return {name: Template.from_stack(stack) for name, stack in synthesized.stacks.items()}


@pytest.fixture(scope="session")
def prod(templates: dict[str, Template]) -> Template:
    return templates[settings.environment("prod").stack_name]
