"""``CompiledModel``: load an artifact, check inputs, run its partitions in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.runtime.artifact import (
    Manifest,
    PartitionSpec,
    TensorSpec,
    read_manifest,
    read_report,
    verify_payloads,
)
from ai_vmm.runtime.artifact_zip import Unpacked, unpack_zip
from ai_vmm.runtime.dispatch import build_plans, partition_waves, select_plan
from ai_vmm.runtime.errors import ArtifactError, InputError
from ai_vmm.runtime.executors import Executor, create_executor
from ai_vmm.runtime.staging import os_error_text


class CompiledModel:
    """A loaded artifact: call it with numpy arrays, get numpy arrays back.

    ``model(**inputs)`` and ``model.run(inputs)`` return ``{output name: np.ndarray}``.
    Calls may come from several threads at once.
    """

    def __init__(self, root: Path, manifest: Manifest, executors: dict[str, Executor]) -> None:
        self.root = root
        self.manifest = manifest
        self._executors = executors
        self._output_names = tuple(spec.name for spec in manifest.outputs)
        self._checker = InputChecker(manifest.inputs)
        self._plans = build_plans(manifest, executors)
        self._executor_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._unpacked: Unpacked | None = None
        """A zip artifact's unpacked files, removed by ``close`` (or at garbage collection)."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.outputs

    @property
    def partitions(self) -> tuple[PartitionSpec, ...]:
        return self.manifest.partitions

    def report(self) -> dict[str, Any]:
        """The artifact's ``report.json`` (what was built and why)."""
        return read_report(self.root)

    def plan_for(self, inputs: Mapping[str, Any]) -> str:
        """The id of the plan that runs for ``inputs`` (shape-bucketed artifacts have several)."""
        return select_plan(self._plans, self._checker(inputs)).id

    def run_profiled(
        self, inputs: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[tuple[str, float]]]:
        """Like ``run``, and the wall time of each partition in seconds, in run order."""
        values = dict(self._checker(inputs))
        times: list[tuple[str, float]] = []
        for part in select_plan(self._plans, values).partitions:
            feed = {name: values[name] for name in part.inputs}
            start = time.perf_counter()
            values.update(self._executors[part.id].run(feed))
            times.append((part.id, time.perf_counter() - start))
        return {name: values[name] for name in self._output_names}, times

    def profile_ops(self, inputs: Mapping[str, Any], runs: int = 20) -> list[dict[str, Any]]:
        """Each partition's backend counters: ``{partition, target, op, ms}`` per op type."""
        values = dict(self._checker(inputs))
        rows: list[dict[str, Any]] = []
        for part in select_plan(self._plans, values).partitions:
            feed = {name: values[name] for name in part.inputs}
            executor = self._executors[part.id]
            profile = getattr(executor, "profile_ops", None)
            if profile is not None:
                for row in profile(feed, runs):
                    rows.append({"partition": part.id, "target": part.target, **row})
            values.update(executor.run(feed))
        return rows

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        return self.run(inputs)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run the model on ``inputs`` (by name) and return every output by name."""
        checked = self._checker(inputs)
        plan = select_plan(self._plans, checked)
        if plan.direct is not None:
            # The executor returns exactly the manifest's outputs, as fresh arrays.
            return plan.direct.run(checked)
        values = dict(checked)  # never add intermediate tensors to the caller's dict
        for wave in plan.waves:
            if len(wave) == 1:
                part = wave[0]
                values.update(self._executors[part.id].run({n: values[n] for n in part.inputs}))
                continue
            # Independent partitions on different devices run at the same time.
            futures = [
                self._pool().submit(self._executors[p.id].run, {n: values[n] for n in p.inputs})
                for p in wave
            ]
            for future in futures:
                values.update(future.result())
        # Executors hand back arrays they own (no backend buffer escapes), so no copy here.
        return {name: values[name] for name in self._output_names}

    def close(self) -> None:
        """Release the backends and remove a zip artifact's unpacked files. Idempotent.

        A closed model raises ``ArtifactError`` when called. Zip artifacts are also cleaned
        up when the model is garbage-collected or the interpreter exits.
        """
        with self._pool_lock:
            pool, self._executor_pool = self._executor_pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        closed = _ClosedExecutor(str(self.root))
        self._executors = dict.fromkeys(self._executors, closed)
        self._plans = build_plans(self.manifest, self._executors)
        if self._unpacked is not None:
            self._unpacked.cleanup()

    def __enter__(self) -> CompiledModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._executor_pool is None:
                width = max(len(wave) for plan in self._plans for wave in plan.waves)
                self._executor_pool = ThreadPoolExecutor(width, thread_name_prefix="ai-vmm")
            return self._executor_pool


class _ClosedExecutor:
    """Stands in for every executor of a closed model."""

    def __init__(self, where: str) -> None:
        self._where = where

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        raise ArtifactError(f"the model loaded from {self._where} was closed; load it again")


def load(path: str | Path) -> CompiledModel:
    """Load an artifact directory (``model.vmm``) or its zip form, verifying every payload hash.

    A zip is validated before anything is unpacked; its hashed files go to a directory under
    ``$TMPDIR`` that ``close()`` (or the ``with`` block, garbage collection, interpreter exit)
    removes. A rejected artifact leaves nothing behind.

    Raises:
        ArtifactError: the artifact is missing, corrupt, changed after compile or too new.
        DeviceError: a device or backend the artifact needs is not present here.
    """
    root = Path(path)
    try:
        exists, is_file = root.exists(), root.is_file()
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {root}: {os_error_text(exc)}") from exc
    if not exists:
        raise ArtifactError(f"artifact {root} does not exist")
    unpacked: Unpacked | None = None
    if is_file:
        unpacked, manifest = unpack_zip(root)
        root = unpacked.path
    else:
        manifest = read_manifest(root)
        verify_payloads(root, manifest)
    try:
        return _load_verified(path, root, manifest, unpacked)
    except BaseException:
        if unpacked is not None:
            unpacked.cleanup()
        raise


def _load_verified(
    path: str | Path, root: Path, manifest: Manifest, unpacked: Unpacked | None
) -> CompiledModel:
    if manifest.kind == "causal-lm":
        from ai_vmm.runtime.llm import load_causal_lm  # type: ignore[attr-defined]

        lm = load_causal_lm(root, manifest)
        if unpacked is not None:
            # The unpacked files live as long as the LM object (removed at its collection or
            # at exit); its close() may call ``unpacked.cleanup()`` through this attribute.
            lm._unpacked = unpacked
        return lm  # type: ignore[return-value]
    if manifest.kind != "model":
        raise ArtifactError(
            f"{path}: artifact kind '{manifest.kind}' is unknown to this runtime; upgrade ai-vmm"
        )
    executors = {
        part.id: create_executor(
            part.target,
            root / part.entry,
            part.device,
            executor_config(manifest, part),
            part.outputs,
        )
        for part in manifest.partitions
    }
    model = CompiledModel(root, manifest, executors)
    model._unpacked = unpacked
    return model


def executor_config(manifest: Manifest, part: PartitionSpec) -> dict[str, Any]:
    """``part``'s executor config, plus ``shares_cpu`` where it takes turns with other
    partitions of its plan on the host CPU.

    Each executor decides what sharing the CPU means for its backend. ONNX Runtime's intra-op
    workers keep spinning for a while after a run returns, waiting for more work; where several
    partitions take turns on the host CPU, they spin on the cores that the next partition's
    workers need: on 2 cores, a ResNet cut in two ran 1.62 ms as one partition and 2.43 ms as
    two at batch 8 (docs/partition-overhead.md). So the ONNX Runtime executor stops its workers
    spinning when a run returns (the split: 1.72 ms), at the price of waking them on the next
    run (10-40 us a call at batch 1 there); OpenVINO's threads are its own and it ignores the
    hint. Partitions alone on the CPU keep their backend's defaults.
    """
    by_id = {p.id: p for p in manifest.partitions}
    plans = [plan.partitions for plan in manifest.plans] or [tuple(by_id)]
    sharing = any(
        part.id in ids and sum(1 for pid in ids if pid in by_id and by_id[pid].device == "CPU") > 1
        for ids in plans
    )
    if part.device == "CPU" and sharing:
        return {**part.config, "shares_cpu": True}
    return part.config


class InputChecker:
    """``check_inputs`` with the per-spec work done once, so the hot path is a few comparisons.

    A call whose inputs are numpy arrays of the right dtypes and shapes costs one dtype and one
    per-axis comparison per input; anything else goes through ``check_inputs``, which also
    writes the error messages.
    """

    def __init__(self, specs: tuple[TensorSpec, ...]) -> None:
        self._specs = specs
        self._fast: list[_FastSpec] | None = []
        for spec in specs:
            dtype = numpy_dtype(spec.dtype)
            if spec.kind != "tensor" or spec.shape is None or dtype is None:
                self._fast = None
                break
            dims = spec.shape
            self._fast.append(
                (
                    spec.name,
                    dtype,
                    len(dims),
                    tuple((i, d) for i, d in enumerate(dims) if isinstance(d, int)),
                    tuple((i, d) for i, d in enumerate(dims) if isinstance(d, str)),
                    tuple(
                        (i, d.get("min", 0), d.get("max", 1 << 62))
                        for i, d in enumerate(dims)
                        if isinstance(d, dict)
                    ),
                )
            )

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if self._fast is not None and len(inputs) == len(self._fast) and self._passes(inputs):
            return inputs if isinstance(inputs, dict) else dict(inputs)
        return check_inputs(self._specs, inputs)

    def _passes(self, inputs: Mapping[str, Any]) -> bool:
        symbols: dict[str, int] = {}
        for name, dtype, rank, fixed, named, ranges in self._fast or ():
            array = inputs.get(name)
            if array.__class__ is not np.ndarray or array.dtype != dtype:
                return False
            shape = array.shape
            if len(shape) != rank:
                return False
            for axis, size in fixed:
                if shape[axis] != size:
                    return False
            for axis, symbol in named:
                if symbols.setdefault(symbol, shape[axis]) != shape[axis]:
                    return False
            for axis, low, high in ranges:
                if not low <= shape[axis] <= high:
                    return False
        return True


# name, dtype, rank, fixed (axis, size), symbolic (axis, name), ranges (axis, low, high)
_FastSpec = tuple[
    str,
    "np.dtype[Any]",
    int,
    tuple[tuple[int, int], ...],
    tuple[tuple[int, str], ...],
    tuple[tuple[int, int, int], ...],
]


def numpy_dtype(name: str) -> np.dtype[Any] | None:
    """The numpy dtype a manifest names; ``None`` when the name is empty or unknown here.

    bfloat16, float8, int4 and friends are ml_dtypes types: numpy knows their names only once
    ml_dtypes is imported, which a deployment process may never have done.
    """
    if not name:
        return None
    try:
        return np.dtype(name)
    except TypeError:
        pass
    try:
        import ml_dtypes
    except ImportError:
        return None
    found = getattr(ml_dtypes, name, None)
    return np.dtype(found) if found is not None else None


def check_inputs(specs: tuple[TensorSpec, ...], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Check inputs by name, dtype and shape against the signature; return them as arrays.

    Symbolic dimensions must agree wherever the same symbol appears; ranges are enforced.
    """
    expected = {spec.name for spec in specs}
    unknown = sorted(set(inputs) - expected)
    if unknown:
        raise InputError(
            f"unknown input {', '.join(map(repr, unknown))}; the model takes "
            f"{', '.join(_describe(s) for s in specs)}"
        )
    missing = [spec.name for spec in specs if spec.name not in inputs]
    if missing:
        raise InputError(
            f"missing input {', '.join(map(repr, missing))}; the model takes "
            f"{', '.join(_describe(s) for s in specs)}"
        )
    symbols: dict[str, tuple[int, str]] = {}
    values: dict[str, Any] = {}
    for spec in specs:
        value = inputs[spec.name]
        if spec.kind != "tensor":
            values[spec.name] = value
            continue
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        dtype = numpy_dtype(spec.dtype)
        if dtype == np.dtype(object) and array.dtype.kind in "US":
            array = array.astype(object)  # ONNX strings: numpy str arrays are welcome too
        if dtype is not None and array.dtype != dtype:
            hint = "object" if dtype == np.dtype(object) else spec.dtype
            raise InputError(
                f"input '{spec.name}' has dtype {array.dtype}, the model expects {spec.dtype} "
                f"(convert with .astype({hint!r}))"
            )
        if spec.shape is not None:
            _check_shape(spec, array.shape, symbols)
        values[spec.name] = array
    return values


def _check_shape(
    spec: TensorSpec, shape: tuple[int, ...], symbols: dict[str, tuple[int, str]]
) -> None:
    assert spec.shape is not None
    if len(shape) != len(spec.shape):
        raise InputError(
            f"input '{spec.name}' has shape {list(shape)} (rank {len(shape)}), the model expects "
            f"{_shape_text(spec.shape)} (rank {len(spec.shape)})"
        )
    for axis, (size, dim) in enumerate(zip(shape, spec.shape, strict=True)):
        if isinstance(dim, int) and size != dim:
            raise InputError(
                f"input '{spec.name}' has shape {list(shape)}, the model expects "
                f"{_shape_text(spec.shape)} (axis {axis} must be {dim})"
            )
        if isinstance(dim, dict):
            low, high = dim.get("min", 0), dim.get("max")
            if size < low or (high is not None and size > high):
                raise InputError(
                    f"input '{spec.name}' axis {axis} is {size}, outside the compiled range "
                    f"{low}..{'' if high is None else high}"
                )
        if isinstance(dim, str):
            seen = symbols.setdefault(dim, (size, spec.name))
            if seen[0] != size:
                raise InputError(
                    f"dimension '{dim}' is {size} in input '{spec.name}' but {seen[0]} in "
                    f"input '{seen[1]}'; inputs sharing a dimension name must agree"
                )


def _shape_text(shape: tuple[Any, ...]) -> str:
    parts = []
    for dim in shape:
        if isinstance(dim, dict):
            parts.append(f"{dim.get('min', 0)}..{dim.get('max', '')}")
        else:
            parts.append("?" if dim is None else str(dim))
    return "[" + ",".join(parts) + "]"


def _describe(spec: TensorSpec) -> str:
    if spec.kind != "tensor":
        return f"{spec.name} ({spec.kind})"
    shape = "?" if spec.shape is None else _shape_text(spec.shape)
    return f"{spec.name}: {spec.dtype}{shape}"


__all__ = [
    "ArtifactError",
    "CompiledModel",
    "InputError",
    "check_inputs",
    "executor_config",
    "load",
    "partition_waves",
]
