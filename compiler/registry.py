"""The one place that knows every target: lazy import strings, never import side effects."""

from __future__ import annotations

import importlib
from typing import Any

from ai_vmm.runtime.errors import CompileError

TARGETS: dict[str, str] = {
    "openvino": "ai_vmm.targets.openvino:OpenVinoTarget",
    "onnxruntime": "ai_vmm.targets.onnxruntime:OnnxRuntimeTarget",
    "cuda": "ai_vmm.targets.cuda:CudaTarget",
    "tensorrt": "ai_vmm.targets.tensorrt:TensorRtTarget",
}

# The static rule of --no-tune: the first device in this order that runs every node wins.
# OpenVINO first on Intel hardware (its CPU plugin and its GPU/NPU plugins are the reason to
# compile at all); ONNX Runtime first elsewhere (measured on AMD EPYC: see docs/targets.md).
STATIC_PRIORITY_INTEL = (
    "tensorrt:0",
    "cuda:0",
    "openvino:GPU",
    "openvino:NPU",
    "openvino:CPU",
    "onnxruntime:CPU",
)
STATIC_PRIORITY_OTHER = ("tensorrt:0", "cuda:0", "onnxruntime:CPU", "openvino:CPU")

_instances: dict[str, Any] = {}


def get_target(name: str) -> Any:
    """The target called ``name`` (imported on first use)."""
    if name not in TARGETS:
        raise CompileError(f"unknown target '{name}' (known: {', '.join(sorted(TARGETS))})")
    if name not in _instances:
        module_name, class_name = TARGETS[name].split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise CompileError(f"target '{name}' cannot be used here: {exc}") from exc
        _instances[name] = getattr(module, class_name)()
    return _instances[name]


def discoverers() -> dict[str, Any]:
    """``name -> discover(cpu)`` for every target whose library imports here."""
    found: dict[str, Any] = {}
    for name in TARGETS:
        try:
            found[name] = get_target(name).discover
        except CompileError as exc:
            found[name] = _missing(str(exc))
    return found


def _missing(message: str) -> Any:
    def discover(cpu: Any) -> tuple[list[Any], None, str]:
        return [], None, message

    return discover
