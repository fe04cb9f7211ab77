"""One executor per backend, all of the same shape, imported lazily by target name.

A deployment machine installs the runtime and one vendor runtime; the executor of a backend that
is not installed is only imported (and fails with a clear message) when an artifact needs it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from ai_vmm.runtime.errors import ArtifactError, DeviceError

_EXECUTORS: dict[str, str] = {
    "openvino": "ai_vmm.runtime.executors.openvino:OpenVinoExecutor",
    "onnxruntime": "ai_vmm.runtime.executors.onnxruntime:OnnxRuntimeExecutor",
    "cuda": "ai_vmm.runtime.executors.cuda:CudaExecutor",
    "tensorrt": "ai_vmm.runtime.executors.tensorrt:TensorRtExecutor",
}

_SDK = {
    "openvino": "openvino",
    "onnxruntime": "onnxruntime",
    "cuda": "torch",
    "tensorrt": "tensorrt",
}


class Executor(Protocol):
    """Runs one partition's payload on one device."""

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run on numpy inputs (by name); return numpy outputs by name. Thread-safe."""
        ...


def create_executor(
    target: str, entry: Path, device: str, config: dict[str, Any], outputs: tuple[str, ...]
) -> Executor:
    """Instantiate the executor for ``target`` on ``device`` from the payload file ``entry``.

    ``outputs`` names the payload's outputs in their order, as the manifest records them.
    """
    if config.get("deferred"):
        raise DeviceError(
            f"partition payload for {target}:{device} was not built: {config['deferred']}"
        )
    spec = _EXECUTORS.get(target)
    if spec is None:
        raise ArtifactError(
            f"artifact needs target '{target}', which this runtime does not know "
            f"(known: {', '.join(sorted(_EXECUTORS))})"
        )
    module_name, class_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DeviceError(
            f"artifact needs the {target} runtime, which is not installed here "
            f"(pip install {_SDK.get(target, target)}): {exc}"
        ) from exc
    factory = getattr(module, class_name)
    executor: Executor = factory(entry, device, config, outputs)
    return executor
