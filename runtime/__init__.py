"""ai-vmm runtime: load an artifact and run it.

This package is the bottom floor: it imports numpy and, lazily, the one vendor runtime an
artifact needs. It never imports the compiler, the passes, the targets, torch, tensorflow,
nncf or onnxscript, so a deployment machine needs nothing more.
"""

from ai_vmm.runtime.artifact import FORMAT_VERSION, Manifest, PartitionSpec, TensorSpec
from ai_vmm.runtime.errors import (
    ArtifactError,
    CompileError,
    DeviceError,
    InputError,
    ModelLoadError,
    UnsupportedModelError,
    VmmError,
)
from ai_vmm.runtime.model import CompiledModel, load

__all__ = [
    "FORMAT_VERSION",
    "ArtifactError",
    "CompileError",
    "CompiledModel",
    "DeviceError",
    "InputError",
    "Manifest",
    "ModelLoadError",
    "PartitionSpec",
    "TensorSpec",
    "UnsupportedModelError",
    "VmmError",
    "load",
]
