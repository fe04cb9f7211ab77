"""The one place that knows every target: lazy import strings, never import side effects."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from ai_vmm.runtime.errors import CompileError
from ai_vmm.targets.base import Target

TARGETS: dict[str, str] = {
    "openvino": "ai_vmm.targets.openvino:OpenVinoTarget",
    "onnxruntime": "ai_vmm.targets.onnxruntime:OnnxRuntimeTarget",
    "cuda": "ai_vmm.targets.cuda:CudaTarget",
    "tensorrt": "ai_vmm.targets.tensorrt:TensorRtTarget",
}

PACKAGES: dict[str, str] = {
    "openvino": "openvino",
    "onnxruntime": "onnxruntime",
    "cuda": "torch",
    "tensorrt": "tensorrt",
}
"""The library whose version shapes each target's payloads (the manifest's toolchain); the same
as each target's ``package``, readable without importing the target."""

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

_instances: dict[str, Target] = {}


_TARGET_HINTS = {
    "gpu": "cuda:0",
    "nvidia": "cuda:0",
    "cuda0": "cuda:0",
    "trt": "tensorrt:0",
    "cpu": "openvino:CPU or onnxruntime:CPU",
    "ov": "openvino:CPU",
    "ort": "onnxruntime:CPU",
    "onnx": "onnxruntime:CPU",
    "igpu": "openvino:GPU",
    "intel": "openvino:CPU",
    "npu": "openvino:NPU",
}


def suggest_target(item: str) -> str | None:
    """The ``--target`` a mistyped ``item`` most likely meant (``gpu`` -> ``cuda:0``)."""
    name, _, device = item.strip().partition(":")
    key = name.lower()
    hint = _TARGET_HINTS.get(key) or _TARGET_HINTS.get(key.replace(":", ""))
    if hint is None and key in TARGETS:
        hint = f"{key}:{device}" if device else key
    if hint is None:
        close = difflib.get_close_matches(key, list(TARGETS), n=1, cutoff=0.5)
        hint = f"{close[0]}:{device}" if close and device else (close[0] if close else None)
    return hint


def get_target(name: str) -> Target:
    """The target called ``name`` (imported on first use)."""
    if name not in TARGETS:
        hint = suggest_target(name)
        raise CompileError(
            f"unknown target '{name}'"
            + (f" (did you mean {hint}?)" if hint else "")
            + f"; known: {', '.join(sorted(TARGETS))}"
        )
    if name not in _instances:
        module_name, class_name = TARGETS[name].split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise CompileError(f"target '{name}' cannot be used here: {exc}") from exc
        instance = getattr(module, class_name)()
        if not isinstance(instance, Target):
            raise CompileError(f"target '{name}' does not implement ai_vmm.targets.base.Target")
        _instances[name] = instance
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
