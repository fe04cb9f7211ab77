"""The one place where serve meets the layers below: deploying a model and running it.

Everything else in ``ai_vmm.serve`` sees a ``TensorModel`` (numpy in, numpy out, a signature)
or a ``LanguageModel`` (a tokenizer and a continuous-batching engine) and never imports the
deploy or runtime packages itself. Models are loaded with ``VMM().deploy(...)``: the model's
config gives the constraints, a replica's device becomes its preferred hardware, and the
deployment store makes the second start of a server as fast as loading the chosen artifact.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ai_vmm.runtime.errors import ModelLoadError, VmmError

_vmm_lock = threading.Lock()
_vmms: dict[str, Any] = {}


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
    batch: int
    """The batch size deploy chose for this model (what one call should gather)."""

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        """Raise ``InputError`` unless ``inputs`` fit the signature (named dims agreeing too)."""
        ...

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass
class DeployedTensorModel:
    """A tensor model deployed by ``VMM().deploy``."""

    deployment: Any
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    device: str
    memory: dict[str, int]
    platform: str
    batch: int
    kind: str = "model"
    _closed: bool = field(default=False, repr=False)

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        from ai_vmm.runtime.model import check_inputs

        # Checked per request before batching, so one bad request never fails a whole batch.
        check_inputs(self.deployment.model.manifest.inputs, inputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(self.deployment.run(inputs))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.deployment.close()

    def workers(self) -> list[TensorModel]:
        """What the batcher runs batches on: this model, or, for a deployment over a replica
        set (deploy's ``replicas``), one worker per replica (the set runs one request at a
        time on each), each shown on its replica's device and charged that replica's
        payloads. Every worker runs its batch through the set (its dispatch, stealing and
        rerouting); the deployment closes with the last worker."""
        members = getattr(self.deployment.model, "members", None)
        if not members or len(members) < 2:
            return [self]
        shared = _Shared(self)
        return [_SetWorker(shared, device, _footprint_of(model)[0]) for device, model in members]

    def replica_set(self) -> dict[str, Any] | None:
        """Deploy's replica decision and the set's live counters, or ``None`` (one device)."""
        record = self.deployment.explanation.get("replicas")
        if record is None:
            return None
        found: dict[str, Any] = {
            key: record.get(key) for key in ("asked", "kept", "pruned", "why", "measured")
        }
        stats = getattr(self.deployment.model, "stats", None)
        if callable(stats):
            found["replicas"] = [
                {k: r[k] for k in ("name", "enabled", "reason", "completed", "stolen", "share")}
                for r in stats()["replicas"]
            ]
        return found


class _Shared:
    """A deployment shared by several batcher workers: closed when the last one closes."""

    def __init__(self, owner: DeployedTensorModel) -> None:
        self.owner = owner
        self.open = 0
        self.lock = threading.Lock()

    def release(self) -> None:
        with self.lock:
            self.open -= 1
            last = self.open == 0
        if last:
            self.owner.close()


class _SetWorker:
    """One batcher worker of a deployment over a replica set (``DeployedTensorModel.workers``)."""

    kind = "model"

    def __init__(self, shared: _Shared, device: str, memory: dict[str, int]) -> None:
        owner = shared.owner
        self.inputs, self.outputs = owner.inputs, owner.outputs
        self.platform, self.batch = owner.platform, owner.batch
        self.device = device
        self.memory = memory
        self._shared = shared
        self._closed = False
        with shared.lock:
            shared.open += 1

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        self._shared.owner.check(inputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._shared.owner.run(inputs)

    def replica_set(self) -> dict[str, Any] | None:
        return self._shared.owner.replica_set()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shared.release()


@dataclass
class DeployedLanguageModel:
    """A causal LM deployed by ``VMM().deploy``, seen through ``generation.LanguageModel``."""

    deployment: Any
    device: str
    memory: dict[str, int]
    platform: str
    context_length: int
    kind: str = "causal-lm"
    _closed: bool = field(default=False, repr=False)

    def encode(self, text: str) -> list[int]:
        return list(self.deployment.model.encode_prompt(text))

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return list(self.deployment.model.encode_prompt(messages))

    def start_engine(self, max_batch: int) -> Any:
        return self.deployment.model.engine(max_batch=max_batch)

    def submit(self, engine: Any, ids: list[int], params: Any, on_event: Any) -> Any:
        from ai_vmm.runtime.llm import GenerationParams
        from ai_vmm.serve.generation import GenEvent

        request = GenerationParams(
            max_new_tokens=params.max_tokens,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            repetition_penalty=params.repetition_penalty,
            stop=params.stop,
            seed=params.seed,
            min_new_tokens=params.min_tokens,
        )

        def forward(event: Any) -> None:
            finish = event.finish_reason
            error = event.error
            if finish is not None and finish not in ("stop", "length") and error is None:
                error = f"the generation ended: {finish}"
            on_event(
                GenEvent(
                    text=event.text or "",
                    token=event.token,
                    finish_reason=finish if finish in ("stop", "length") else None,
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    error=error,
                )
            )

        return engine.submit(ids, request, forward)

    def stop_engine(self, engine: Any) -> None:
        if engine is not None:
            engine.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.deployment.close()


def load_model(
    source: Path,
    *,
    kind: str,
    constraints: dict[str, Any] | None = None,
    device: str | None = None,
    vmm: Any = None,
) -> DeployedTensorModel | DeployedLanguageModel:
    """Deploy the model at ``source`` for serving (one replica).

    Args:
        source: anything ``VMM().deploy`` takes: an artifact, ``.onnx``, ``.gguf``, a Hugging
            Face folder.
        kind: ``model`` or ``causal-lm`` (from the repository; checked against the deployment).
        constraints: deploy constraints (from the model's config).
        device: a hardware class to place this replica on (``INTEL_CPU``, ``NVIDIA_GPU``...);
            it becomes the first ``preferred_hardware``.
        vmm: the ``ai_vmm.VMM`` to deploy with (default: one per process, deploy's default
            store ``~/.cache/ai-vmm/deployments``).

    Raises:
        VmmError: the model cannot be deployed; the message says why.
    """
    limits = dict(constraints or {})
    if device is not None:
        preferred = list(limits.get("preferred_hardware") or [])
        limits["preferred_hardware"] = [device, *[d for d in preferred if d != device]]
    deployment = (vmm or _default_vmm()).deploy(str(source), constraints=limits or None)
    try:
        if deployment.kind != kind:
            raise ModelLoadError(
                f"{source} deployed as a {deployment.kind} model but the repository says {kind}"
            )
        if deployment.kind == "causal-lm":
            return _wrap_lm(deployment)
        return _wrap_tensors(deployment)
    except Exception:
        deployment.close()
        raise


def _default_vmm() -> Any:
    """One ``VMM`` per process: hardware discovery happens once."""
    with _vmm_lock:
        if "vmm" not in _vmms:
            from ai_vmm.deploy import VMM

            _vmms["vmm"] = VMM()
        return _vmms["vmm"]


def _footprint(deployment: Any) -> tuple[dict[str, int], list[str], str]:
    """Bytes of the payload files per device, the devices in order, and the platform name
    (of every replica, for a deployment over a replica set)."""
    members = getattr(deployment.model, "members", None)
    if members and len(members) > 1:
        memory: dict[str, int] = {}
        devices: list[str] = []
        for _, model in members:
            size, where, _ = _footprint_of(model)
            for key, value in size.items():
                memory[key] = memory.get(key, 0) + value
            devices += where
        targets = "+".join(sorted({d.split(":")[0] for d in devices})) or "ai-vmm"
        return memory, list(dict.fromkeys(devices)), f"ai-vmm/{targets}"
    return _footprint_of(deployment.model, Path(deployment.artifact_path))


def _footprint_of(model: Any, root: Path | None = None) -> tuple[dict[str, int], list[str], str]:
    """``_footprint`` of one loaded artifact (its root: ``model.root`` unless given)."""
    root = Path(root if root is not None else model.root)
    manifest = model.manifest
    memory: dict[str, int] = {}
    devices: list[str] = []
    for part in manifest.partitions:
        key = f"{part.target}:{part.device}"
        devices.append(key)
        size = sum((root / f).stat().st_size for f in part.files if (root / f).is_file())
        memory[key] = memory.get(key, 0) + size
    if manifest.assets and devices:
        extra = sum((root / f).stat().st_size for f in manifest.assets if (root / f).is_file())
        memory[devices[0]] = memory.get(devices[0], 0) + extra
    targets = "+".join(sorted({p.target for p in manifest.partitions})) or "ai-vmm"
    return memory, list(dict.fromkeys(devices)), f"ai-vmm/{targets}"


def _wrap_lm(deployment: Any) -> DeployedLanguageModel:
    # runtime.llm's chat templates use jinja2.ext without importing it, which works only where
    # something else (transformers) imported it first: a server loading from the deployment
    # store does not. Remove once ai_vmm.runtime.llm.tokenizer imports it itself.
    with contextlib.suppress(ImportError):
        import jinja2.ext  # noqa: F401
    memory, devices, platform = _footprint(deployment)
    return DeployedLanguageModel(
        deployment=deployment,
        device=",".join(devices),
        memory=memory,
        platform=platform,
        context_length=int(deployment.model.context_length),
    )


def _wrap_tensors(deployment: Any) -> DeployedTensorModel:
    from ai_vmm.runtime.model import numpy_dtype

    manifest = deployment.model.manifest
    batch_symbol = _batch_symbol(manifest.inputs, manifest.outputs)
    where = deployment.artifact_path

    def tensors(specs: Any) -> tuple[Tensor, ...]:
        out = []
        for spec in specs:
            if spec.kind != "tensor":
                raise ModelLoadError(
                    f"{where}: {spec.name} is a {spec.kind}, not a tensor; "
                    "the inference protocols carry tensors only"
                )
            dtype = numpy_dtype(spec.dtype)
            if dtype is None:
                raise ModelLoadError(f"{where}: {spec.name} has an unknown dtype {spec.dtype!r}")
            shape = None if spec.shape is None else tuple(_dim(d) for d in spec.shape)
            out.append(Tensor(spec.name, dtype, shape, batch_symbol is not None))
        return tuple(out)

    memory, devices, platform = _footprint(deployment)
    return DeployedTensorModel(
        deployment=deployment,
        inputs=tensors(manifest.inputs),
        outputs=tensors(manifest.outputs),
        device=",".join(devices),
        memory=memory,
        platform=platform,
        batch=int(getattr(deployment, "batch", 1) or 1),
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
    "DeployedLanguageModel",
    "DeployedTensorModel",
    "Tensor",
    "TensorModel",
    "VmmError",
    "load_model",
]
