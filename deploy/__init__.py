"""The deployment layer: ``VMM`` discovers the hardware and deploys a model under constraints.

``from ai_vmm import VMM``; ``VMM().deploy(model, constraints=..., samples=...)`` returns a
``Deployment`` (docs/deploy.md). Attributes are imported lazily, so importing this package
loads nothing heavy.

Floors: this package imports ``ai_vmm`` (the compiler's public API) and ``ai_vmm.runtime``;
nothing below it imports this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "VMM": "ai_vmm.deploy.vmm",
    "ConstraintWarning": "ai_vmm.deploy.vmm",
    "Deployment": "ai_vmm.deploy.deployment",
    "Constraints": "ai_vmm.deploy.constraints",
    "Telemetry": "ai_vmm.deploy.telemetry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ai_vmm.deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
