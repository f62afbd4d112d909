"""What every task shares: `ops_task`, which maps OpsError to a clean invoke Exit and carries `--dry` to core.run."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from invoke import Context, Exit, task

from ops import core

F = TypeVar("F", bound=Callable[..., Any])


def with_defaults(fn: Callable[..., Any], help: dict[str, str]) -> dict[str, str]:
    """The flags' help texts, each ending with its real default (invoke's --help shows none)."""
    described = dict(help)
    for name, param in list(inspect.signature(fn).parameters.items())[1:]:
        default = param.default
        if default is inspect.Parameter.empty or default in (None, "", False) or isinstance(default, list | tuple):
            continue
        shown = "on" if default is True else f"{default:g}" if isinstance(default, float) else str(default)
        text = described.get(name, "").rstrip()
        described[name] = f"{text} [default: {shown}]".lstrip()
    return described


def ops_task(*args: Any, what: str = "", **kwargs: Any) -> Any:
    """`@task` (same arguments), plus: an OpsError ends the task with its message and no traceback
    ("<what> failed: ..." with exit code 1, or "<what> refused: ..." with the error's exit code 2), under
    `invoke --dry` every command with a side effect that goes through `ops.core.run` is shown, not started, and
    `--help` states each flag's default.

    `what` names the task in those messages (default: the task's name).
    """

    def decorate(fn: F) -> Any:
        label = what or kwargs.get("name") or fn.__name__.replace("_", "-")
        kwargs["help"] = with_defaults(fn, kwargs.get("help") or {})

        @functools.wraps(fn)
        def run(c: Context, *a: Any, **kw: Any) -> Any:
            with core.dry_run(bool(c.config.run.dry)):
                try:
                    return fn(c, *a, **kw)
                except core.OpsError as exc:
                    verb = "refused" if exc.exit_code == 2 else "failed"
                    raise Exit(f"{label} {verb}: {exc}", code=exc.exit_code) from exc

        return task(**kwargs)(run)

    if args:  # bare `@ops_task`
        return decorate(args[0])
    return decorate
