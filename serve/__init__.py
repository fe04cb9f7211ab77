"""Serving: protocols (KServe v2, OpenAI), tenants and QoS, batching, device scheduling, metrics.

``ai_vmm.serve.serve(repository, port=8000)`` runs a server (``vmmc serve``);
``create_app(repository)`` builds its ASGI app for another ASGI server or Ray Serve;
``hash_key(key)`` gives the ``key_sha256`` of a tenant's API key. See docs/serve.md.

Floors: this package sits on ``ai_vmm.deploy``; nothing below it imports this package.
Attributes load lazily, so importing the package does not import FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "serve": "ai_vmm.serve.server",
    "create_app": "ai_vmm.serve.app",
    "hash_key": "ai_vmm.serve.config",
    "ServeConfig": "ai_vmm.serve.config",
    "ServeConfigError": "ai_vmm.serve.config",
    "open_repository": "ai_vmm.serve.repository",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ai_vmm.serve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
