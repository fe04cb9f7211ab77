"""The one place where serve meets the layers below: loading a model and running it.

Everything else in ``ai_vmm.serve`` sees a ``TensorModel`` (numpy in, numpy out, a signature)
or a ``LanguageModel`` (a tokenizer and a continuous-batching engine) and never imports the
deploy or runtime packages itself, so how a model is loaded (today ``ai_vmm.runtime.load`` of
an artifact, compiling a model file first; with issue 14, ``VMM().deploy``) is decided here.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ai_vmm.runtime.errors import ModelLoadError, VmmError

CACHE = Path.home() / ".cache" / "ai-vmm" / "serve"


@dataclass(frozen=True)
class Tensor:
    """One input or output of a served model: name, numpy dtype, shape (-1 for dynamic)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...] | None
    """``None``: the rank is unknown."""
    batch_axis: bool = False
    """Axis 0 is the batch dimension shared by every input and output."""


class TensorModel(Protocol):
    """A loaded tensor model as the batcher sees it."""

    kind: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    device: str
    memory: dict[str, int]
    """Bytes charged per device (``target:device``)."""
    platform: str

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        """Raise ``InputError`` unless ``inputs`` fit the signature (named dims agreeing too)."""
        ...

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass
class LoadedTensorModel:
    """A tensor model loaded from an artifact."""

    compiled: Any
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    device: str
    memory: dict[str, int]
    platform: str
    artifact: Path
    kind: str = "model"
    _closed: bool = field(default=False, repr=False)

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        from ai_vmm.runtime.model import check_inputs

        # Checked per request before batching, so one bad request never fails a whole batch.
        check_inputs(self.compiled.manifest.inputs, inputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(self.compiled.run(inputs))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self.compiled, "close", None)
            if close is not None:
                close()


_compile_lock = threading.Lock()


def load_model(
    source: Path,
    *,
    kind: str,
    constraints: dict[str, Any] | None = None,
    device: str | None = None,
    cache_dir: Path | None = None,
) -> LoadedTensorModel:
    """Load the model at ``source`` for serving.

    Args:
        source: an artifact (``.vmm`` folder or ``.vmm.zip``) or a model file (``.onnx``).
        kind: ``model`` or ``causal-lm`` (from the repository).
        constraints: deploy constraints (from the model's config).
        device: the device to place this replica on (``None``: where the artifact says).
        cache_dir: where compiled artifacts of model files are kept between starts.

    Raises:
        VmmError: the model cannot be loaded; the message says why.
    """
    if kind == "causal-lm":
        raise ModelLoadError(
            f"{source}: serving causal LMs needs the LM runtime (ai_vmm.runtime.llm, issue 15)"
        )
    artifact = _artifact_for(source, cache_dir or CACHE)
    from ai_vmm.runtime import load

    compiled = load(artifact)
    try:
        return _wrap(compiled, artifact)
    except Exception:
        compiled_close = getattr(compiled, "close", None)
        if compiled_close is not None:
            compiled_close()
        raise


def estimate_memory(source: Path) -> int:
    """Bytes a model will take before it is loaded: its payload files (an estimate)."""
    if source.is_dir():
        return sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    return source.stat().st_size if source.exists() else 0


def _artifact_for(source: Path, cache_dir: Path) -> Path:
    if (source / "manifest.json").is_file() or source.name.endswith(".vmm.zip"):
        return source
    if source.suffix != ".onnx":
        raise ModelLoadError(
            f"{source}: cannot serve this file type yet (expected an artifact or .onnx)"
        )
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    artifact = cache_dir / f"{source.stem}-{digest}.vmm"
    if (artifact / "manifest.json").is_file():
        return artifact
    import ai_vmm

    cache_dir.mkdir(parents=True, exist_ok=True)
    # One compile at a time: two lazy loads of the same file must not race on the output path.
    with _compile_lock:
        if not (artifact / "manifest.json").is_file():
            ai_vmm.compile(source, output=artifact, tune=False, cache_dir=cache_dir / "compile")
    return artifact


def _wrap(compiled: Any, artifact: Path) -> LoadedTensorModel:
    from ai_vmm.runtime.model import numpy_dtype

    manifest = compiled.manifest
    batch_symbol = _batch_symbol(manifest.inputs, manifest.outputs)

    def tensors(specs: Any) -> tuple[Tensor, ...]:
        out = []
        for spec in specs:
            if spec.kind != "tensor":
                raise ModelLoadError(
                    f"{artifact}: {spec.name} is a {spec.kind}, not a tensor; "
                    "the inference protocols carry tensors only"
                )
            dtype = numpy_dtype(spec.dtype)
            if dtype is None:
                raise ModelLoadError(f"{artifact}: {spec.name} has an unknown dtype {spec.dtype!r}")
            shape = None if spec.shape is None else tuple(_dim(d) for d in spec.shape)
            out.append(Tensor(spec.name, dtype, shape, batch_symbol is not None))
        return tuple(out)

    memory: dict[str, int] = {}
    devices = []
    for part in manifest.partitions:
        key = f"{part.target}:{part.device}"
        devices.append(key)
        size = sum((artifact / f).stat().st_size for f in part.files if (artifact / f).is_file())
        memory[key] = memory.get(key, 0) + size
    platform = "+".join(sorted({p.target for p in manifest.partitions})) or "ai-vmm"
    return LoadedTensorModel(
        compiled=compiled,
        inputs=tensors(manifest.inputs),
        outputs=tensors(manifest.outputs),
        device=",".join(dict.fromkeys(devices)),
        memory=memory,
        platform=f"ai-vmm/{platform}",
        artifact=artifact,
    )


def _dim(dim: Any) -> int:
    return dim if isinstance(dim, int) else -1


def _batch_symbol(inputs: Any, outputs: Any) -> Any:
    """The symbol of the inputs' axis 0 when the model looks batchable, else ``None``.

    Every input must share one named axis 0 and every output must have a named (not fixed)
    axis 0: exporters often give each output its own symbol for what is the batch axis. Like
    Triton's ``max_batch_size``, a model config asking for batching is the user's word that
    axis 0 is the batch; the batcher checks each output's rows at run time.
    """
    firsts = []
    for spec in inputs:
        if spec.shape is None or len(spec.shape) == 0:
            return None
        firsts.append(spec.shape[0])
    if not firsts or not isinstance(firsts[0], str) or any(f != firsts[0] for f in firsts):
        return None
    for spec in outputs:
        if spec.shape is None or len(spec.shape) == 0 or not isinstance(spec.shape[0], str):
            return None
    return firsts[0]


__all__ = [
    "LoadedTensorModel",
    "Tensor",
    "TensorModel",
    "VmmError",
    "estimate_memory",
    "load_model",
]
