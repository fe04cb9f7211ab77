"""The one exception family of ai-vmm.

Every error a user can cause (a bad model, a bad option, a broken artifact, bad inputs) is a
``VmmError``. Its message is one line that says what was wrong and what to do about it; the CLI
prints exactly that line and exits with the class's ``exit_code``.
"""

from __future__ import annotations


class VmmError(Exception):
    """Base class of every error ai-vmm raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        # One line, always: a multi-line message from a library is folded onto one line.
        super().__init__(" ".join(str(message).split()))


class ModelLoadError(VmmError):
    """The model file is missing, unreadable, truncated or not a model of a known format."""

    exit_code = 2


class UnsupportedModelError(VmmError):
    """The model is valid but uses something no available target can run."""

    exit_code = 3


class CompileError(VmmError):
    """A compile stage failed (codegen, verification against the reference, bad options)."""

    exit_code = 4


class ArtifactError(VmmError):
    """An artifact is missing, corrupt, tampered with or from an unknown format version."""

    exit_code = 5


class InputError(VmmError):
    """Inputs given at run time do not match the model's signature."""

    exit_code = 6


class DeviceError(VmmError):
    """A device or target that was asked for is not present on this machine."""

    exit_code = 7


class ConstraintError(VmmError):
    """No deployment candidate satisfies the constraints (the message names the best figures)."""

    exit_code = 8
