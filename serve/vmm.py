"""``ai_vmm.VMM``: the deployment layer's ``VMM`` with ``serve`` on top.

``VMM().serve(repository)`` is the seed's spelling; serving sits on the deployment layer (the
floors in docs/architecture.md), so the class that can serve is defined up here, where both are
in reach, and ``ai_vmm.VMM`` names it. ``ai_vmm.deploy.VMM`` is the same class without
``serve``. Importing this module does not import FastAPI or uvicorn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ai_vmm.deploy.vmm import VMM as DeployVMM


class VMM(DeployVMM):
    """Discovers the hardware, deploys models under constraints, and serves repositories."""

    def serve(self, repository: str | Path, **options: Any) -> None:
        """Serve a model repository over HTTP until interrupted (``vmmc serve``).

        The models are deployed by this ``VMM`` (its store, measuring time and telemetry).
        ``options`` are those of ``ai_vmm.serve.serve``: ``host``, ``port``, ``config``,
        ``log_level``, ``access_log``.
        """
        from ai_vmm.serve.server import serve

        serve(repository, vmm=self, **options)


__all__ = ["VMM"]
