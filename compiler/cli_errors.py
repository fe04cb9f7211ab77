"""How ``vmmc`` turns every failure into one line on stderr and an exit code.

| code | meaning |
|---|---|
| 0 | success |
| 2 | usage: a bad command line, a missing file, an unreadable model |
| 3-8 | the ``VmmError`` subclasses (``ai_vmm.runtime.errors``) |
| 71 | out of memory (a declared dimension too large for this machine, ...) |
| 74 | a filesystem error not caught closer to its cause |
| 130 | interrupted |
| 70 | an internal error: a bug in ai-vmm (``--debug`` shows the traceback) |

typer vendors click (``typer._click``) and a plain ``pip install`` has no ``click`` package, so
the click exception classes are found through ``typer.BadParameter``'s ancestry, never imported.
"""

from __future__ import annotations

import traceback
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ai_vmm import registry
from ai_vmm.runtime.errors import VmmError
from ai_vmm.runtime.staging import os_error_text

EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_NO_MEMORY = 71
EXIT_IO = 74
EXIT_INTERRUPTED = 130


def _click_class(name: str) -> type[Exception]:
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name:
            return cls
    return typer.BadParameter  # pragma: no cover - every click has both classes


ClickException = _click_class("ClickException")
ClickUsageError = _click_class("UsageError")


class UsageError(VmmError):
    """A command-line mistake: a missing file, an unknown target name, conflicting options."""

    exit_code = EXIT_USAGE


def need_path(path: Path | None, what: str) -> None:
    """Raise a usage error (exit 2) when ``path`` is given and does not exist."""
    if path is None:
        return
    try:
        present = path.exists()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {os_error_text(exc)}") from exc
    if not present:
        raise UsageError(f"{what} {path} does not exist")


# Names people type for a device, and the --target that means it here.
def check_target_spec(spec: str, targets: list[str]) -> None:
    """Reject an unknown target name in ``--target`` with the closest real one (exit 2)."""
    if spec.strip() in ("", "auto"):
        return
    for item in (part.strip() for part in spec.split(",")):
        name = item.partition(":")[0]
        if name in targets:
            continue
        hint = registry.suggest_target(item)
        suggestion = f"; did you mean --target {hint}?" if hint else ""
        raise UsageError(
            f"--target {item}: unknown target '{name}'{suggestion} (targets: "
            f"{', '.join(sorted(targets))}; 'vmmc devices' lists the devices here)"
        )


def exit_code_for(exc: BaseException, err: Console, debug: bool) -> int:
    """Print ``exc`` as one line on ``err`` and return the exit code it deserves."""
    if isinstance(exc, VmmError):
        return _say(err, f"error: {exc}", exc.exit_code, debug)
    if isinstance(exc, typer.Exit):
        return int(exc.exit_code or 0)
    if isinstance(exc, typer.Abort | KeyboardInterrupt):
        return _say(err, "aborted", EXIT_INTERRUPTED, False)
    if isinstance(exc, ClickUsageError):
        return _say(err, f"error: {_usage_text(exc)}", EXIT_USAGE, debug)
    if isinstance(exc, ClickException):
        code = int(getattr(exc, "exit_code", 1) or 1)
        return _say(err, f"error: {_message(exc)}", code, debug)
    if isinstance(exc, MemoryError):
        return _say(
            err,
            f"error: out of memory: {_message(exc) or 'an allocation failed'} (a declared "
            f"input dimension may be too large for this machine: set it with --input "
            f"NAME[SHAPE])",
            EXIT_NO_MEMORY,
            debug,
        )
    if isinstance(exc, OSError):
        return _say(err, f"error: {os_error_text(exc)}", EXIT_IO, debug)
    return _say(
        err,
        f"internal error: {exc.__class__.__name__}: {_message(exc)} (rerun with --debug)",
        EXIT_INTERNAL,
        debug,
    )


def _say(err: Console, line: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    err.print(" ".join(line.split()), markup=False, highlight=False, soft_wrap=True)
    return code


def _message(exc: BaseException) -> str:
    formatter = getattr(exc, "format_message", None)
    text = formatter() if callable(formatter) else str(exc)
    return " ".join(str(text).split())


def _usage_text(exc: Any) -> str:
    text = _message(exc).rstrip(".")
    if not text or exc.__class__.__name__ == "NoArgsIsHelpError":
        text = "missing command or argument"
    context = getattr(exc, "ctx", None)
    where = getattr(context, "command_path", None) or "vmmc"
    return f"{text} (see '{where} --help')"


def show_warnings_in_one_line(err: Console) -> None:
    """Print ai-vmm's own warnings (a cache that cannot be used, ...) as ``warning: ...``."""
    from ai_vmm.cache import CacheWarning

    default = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, CacheWarning):
            err.print(" ".join(f"warning: {message}".split()), markup=False, soft_wrap=True)
            return
        default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
