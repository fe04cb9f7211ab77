"""ai-vmm: a model goes in, a verified artifact comes out, a small runtime runs it.

``ai_vmm.compile(model, target="auto")`` builds an artifact; ``ai_vmm.runtime.load(path)`` (or
``ai_vmm.load``) runs it. Attributes are imported lazily so ``import ai_vmm.runtime`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "compile": "ai_vmm.api",
    "analyze": "ai_vmm.api",
    "load": "ai_vmm.api",
    "CompileResult": "ai_vmm.driver",
    "CompileOptions": "ai_vmm.options",
    "VmmError": "ai_vmm.runtime.errors",
    "ModelLoadError": "ai_vmm.runtime.errors",
    "UnsupportedModelError": "ai_vmm.runtime.errors",
    "CompileError": "ai_vmm.runtime.errors",
    "ArtifactError": "ai_vmm.runtime.errors",
    "InputError": "ai_vmm.runtime.errors",
    "DeviceError": "ai_vmm.runtime.errors",
    "ConstraintError": "ai_vmm.runtime.errors",
    "VMM": "ai_vmm.serve.vmm",
    "Deployment": "ai_vmm.deploy",
    "Constraints": "ai_vmm.deploy",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ai_vmm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
