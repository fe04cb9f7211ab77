"""Frontends: each turns one source format into an onnx_ir model. They never import each other.

``load_model`` is the one entry point the driver calls: it detects the source's format from the
path or the object (``detect_format``) and hands it to that format's frontend, importing it only
then. PyTorch and TensorFlow sources are exported to ONNX by their frontend
(``frontends/torch.py``, ``frontends/tensorflow.py``); the ONNX bytes they produce then go through
the ONNX frontend like any ONNX model, and the sha256 recorded for them is the hash of those bytes.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from ai_vmm.frontends.onnx import LoadedModel, load_onnx, onnx_file_digest
from ai_vmm.runtime.errors import CompileError, ModelLoadError

__all__ = [
    "FRONTEND_OPTIONS",
    "SUPPORTED_FORMATS",
    "LoadedModel",
    "detect_format",
    "load_model",
    "source_digest",
]

SUPPORTED_FORMATS = (
    "ONNX (a .onnx file or an onnx.ModelProto)",
    "PyTorch, extra [torch] (an nn.Module with example_inputs=, a torch.export.ExportedProgram, "
    "a .pt2 file from torch.export.save, a TorchScript .pt/.pth file)",
    "TensorFlow, extra [tf] (a SavedModel directory, a Keras .keras/.h5 file or keras.Model, "
    "a .tflite file)",
)

# Format name -> the frontend options it takes (``ai_vmm.compile(..., **frontend_options)``).
_TORCH_OPTIONS = frozenset(
    {"example_inputs", "dynamic_shapes", "input_names", "output_names", "opset"}
)
_TF_OPTIONS = frozenset(
    {"input_signature", "signature", "tag", "input_names", "output_names", "opset"}
)
FRONTEND_OPTIONS: dict[str, frozenset[str]] = {
    "onnx": frozenset(),
    "torch.module": _TORCH_OPTIONS,
    "torch.exported": _TORCH_OPTIONS,
    "torch.pt2": _TORCH_OPTIONS,
    "torch.script": _TORCH_OPTIONS,
    "tf.saved_model": _TF_OPTIONS,
    "tf.module": _TF_OPTIONS,
    "keras.file": _TF_OPTIONS,
    "keras.model": _TF_OPTIONS,
    "tflite": _TF_OPTIONS,
}

_TORCH_SUFFIXES = (".pt", ".pth", ".jit", ".torchscript")
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def source_digest(source: Any) -> str | None:
    """The sha256 a frontend would give ``source``, computed without loading the model.

    ``None`` when only loading can tell (framework models: their hash is that of the exported
    ONNX, which depends on the frontend options). The cache key uses this, so a cache hit costs
    a hash of the file, not a parse of the model.
    """
    if isinstance(source, str | Path) and Path(source).suffix == ".onnx":
        return onnx_file_digest(Path(source))
    return None


def detect_format(source: Any) -> str:
    """Name the format of ``source`` from its path (suffix, then content) or its type.

    Frameworks are never imported here: objects are recognised by their classes' module names.

    Args:
        source: a path (``str`` or ``Path``) or an in-memory model.

    Returns:
        One of ``onnx``, ``torch.module``, ``torch.exported``, ``torch.pt2``, ``torch.script``,
        ``tf.saved_model``, ``tf.module``, ``keras.file``, ``keras.model``, ``tflite``.

    Raises:
        ModelLoadError: the path does not exist, or the format is not one of those supported.
    """
    if isinstance(source, str | Path):
        return _detect_path(Path(source))
    classes = {f"{c.__module__}.{c.__qualname__}" for c in type(source).__mro__}
    roots = {name.split(".")[0] for name in classes}
    if "onnx.onnx_ml_pb2.ModelProto" in classes or type(source).__name__ == "ModelProto":
        return "onnx"
    if "torch" in roots:
        if any(name.startswith("torch.jit.") and "ScriptModule" in name for name in classes):
            return "torch.script"
        if "torch.export.exported_program.ExportedProgram" in classes:
            return "torch.exported"
        if "torch.nn.modules.module.Module" in classes:
            return "torch.module"
    if any(_is_keras_model_class(name) for name in classes):
        return "keras.model"
    if "tensorflow" in roots and getattr(source, "signatures", None):
        return "tf.module"
    raise ModelLoadError(
        f"cannot compile a {type(source).__module__}.{type(source).__qualname__}: "
        f"supported formats are {'; '.join(SUPPORTED_FORMATS)}"
    )


def load_model(source: Any, frontend_options: dict[str, Any] | None = None) -> LoadedModel:
    """Load ``source`` (a path or an in-memory model) into the IR.

    ``frontend_options`` carries what only some frontends need: ``example_inputs``,
    ``dynamic_shapes`` for torch; ``input_signature``, ``signature``, ``tag`` for TensorFlow;
    ``input_names``, ``output_names``, ``opset`` for both (see docs/frontends.md).

    Raises:
        ModelLoadError: unknown format, unreadable file, a framework that is not installed, or
            an export that failed (the message names the op and quotes the framework).
        CompileError: a frontend option that the source's frontend does not take.
    """
    options = dict(frontend_options or {})
    kind = detect_format(source)
    allowed = FRONTEND_OPTIONS[kind]
    unknown = sorted(set(options) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) if allowed else "none"
        raise CompileError(
            f"option(s) {', '.join(unknown)} do not apply to a {kind} source "
            f"(its frontend takes: {takes})"
        )
    if kind == "onnx":
        return load_onnx(source)
    input_names = options.pop("input_names", None)
    output_names = options.pop("output_names", None)
    label = str(source) if isinstance(source, str | Path) else f"<{type(source).__qualname__}>"
    if kind.startswith("torch."):
        from ai_vmm.frontends.torch import export_torch

        proto, notes, program = export_torch(source, kind, **options)
    else:
        from ai_vmm.frontends.tensorflow import export_tensorflow

        proto, notes = export_tensorflow(source, kind, **options)
        program = None
    proto = rename_io(proto, input_names, output_names)
    loaded = load_onnx(proto)
    return LoadedModel(
        model=loaded.model,
        sha256=loaded.sha256,
        source=label,
        notes=[f"{kind} source exported to ONNX", *notes, *loaded.notes],
        torch_program=program,
    )


def rename_io(
    proto: onnx.ModelProto,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
) -> onnx.ModelProto:
    """Rename the graph's inputs and outputs, in order (fewer names than values: the first ones).

    Raises:
        CompileError: more names than values, a name that is not a non-empty string, a duplicate,
            or a name another value of the graph already has.
    """
    if not input_names and not output_names:
        return proto
    model = ir.serde.deserialize_model(proto)
    graph = model.graph
    taken = {v.name for v in graph.inputs} | set(graph.initializers)
    taken |= {v.name for node in graph for v in node.outputs}
    for what, values, names in (
        ("input", list(graph.inputs), input_names),
        ("output", list(graph.outputs), output_names),
    ):
        if not names:
            continue
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise CompileError(f"{what}_names must be a list of non-empty strings, got {names!r}")
        if len(names) > len(values):
            raise CompileError(
                f"{len(names)} {what}_names given for a model with {len(values)} {what}(s): "
                f"{[v.name for v in values]}"
            )
        if len(set(names)) != len(names):
            raise CompileError(f"{what}_names has duplicates: {list(names)}")
        for value, name in zip(values, names, strict=False):
            if name == value.name:
                continue
            if name in taken:
                raise CompileError(
                    f"cannot name an {what} {name!r}: the model has a value of that name"
                )
            taken.discard(value.name or "")
            taken.add(name)
            value.name = name
    return ir.serde.serialize_model(model)


def _detect_path(path: Path) -> str:
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "tf.saved_model"
        raise ModelLoadError(
            f"{path} is a directory without saved_model.pb (not a TensorFlow SavedModel): "
            f"supported formats are {'; '.join(SUPPORTED_FORMATS)}"
        )
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".tflite":
        return "tflite"
    if suffix in _KERAS_SUFFIXES:
        return "keras.file"
    head = _read_head(path)
    if suffix == ".pt2" or suffix in _TORCH_SUFFIXES or zipfile.is_zipfile(path):
        kind = _torch_archive_kind(path)
        if kind is not None:
            return kind
        if suffix in (".pt2", *_TORCH_SUFFIXES):
            raise ModelLoadError(
                f"{path} is not TorchScript nor a torch.export program (a torch.save file: a "
                f"state dict or a pickled module?): build the nn.Module, load the weights into "
                f"it and compile the module with example_inputs=, or save it with "
                f"torch.export.save / torch.jit.save"
            )
        if _is_keras_zip(path):
            return "keras.file"
    elif head[4:8] == b"TFL3":
        return "tflite"
    elif head.startswith(_HDF5_MAGIC):
        return "keras.file"
    raise ModelLoadError(
        f"{path}: unknown model format (suffix {suffix or 'none'}): supported formats are "
        f"{'; '.join(SUPPORTED_FORMATS)}"
    )


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(16)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _torch_archive_kind(path: Path) -> str | None:
    """``torch.pt2`` / ``torch.script`` from the archive's member names, ``None`` otherwise."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    inner = {name.split("/", 1)[1] for name in names if "/" in name}
    if "archive_format" in inner or any(n.startswith("models/") for n in inner):
        return "torch.pt2"
    if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
        return "torch.script"
    return None


def _is_keras_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return "config.json" in names and any(n.startswith("model.weights") for n in names)


def _is_keras_model_class(name: str) -> bool:
    module, _, qualname = name.rpartition(".")
    root = module.split(".")[0]
    in_keras = root in ("keras", "tf_keras") or module.startswith("tensorflow.python.keras")
    return in_keras and qualname in ("Model", "Functional", "Sequential")
