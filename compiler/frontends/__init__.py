"""Frontends: each turns one source format into an onnx_ir model. They never import each other.

``load_model`` is the one entry point the driver calls: it detects the source's format from the
path or the object and hands it to that format's frontend, importing it only then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ai_vmm.frontends.onnx import LoadedModel, load_onnx, onnx_file_digest

__all__ = ["LoadedModel", "load_model", "source_digest"]


def source_digest(source: Any) -> str | None:
    """The sha256 a frontend would give ``source``, computed without loading the model.

    ``None`` when only loading can tell (in-memory models of other frameworks). The cache key
    uses this, so a cache hit costs a hash of the file, not a parse of the model.
    """
    if isinstance(source, str | Path) and Path(source).suffix == ".onnx":
        return onnx_file_digest(Path(source))
    return None


def load_model(source: Any, frontend_options: dict[str, Any] | None = None) -> LoadedModel:
    """Load ``source`` (a path or an in-memory model) into the IR.

    ``frontend_options`` carries what only some frontends need (``example_inputs``,
    ``dynamic_shapes``, ``input_names`` for torch; ``input_signature`` for TensorFlow).

    Raises:
        ModelLoadError: unknown format, unreadable file, or a framework that is not installed.
    """
    del frontend_options  # the ONNX frontend takes none
    if isinstance(source, str | Path) or type(source).__name__ == "ModelProto":
        return load_onnx(source)
    from ai_vmm.runtime.errors import ModelLoadError

    raise ModelLoadError(
        f"cannot compile a {type(source).__name__}: give an ONNX file path or an onnx.ModelProto"
    )
