"""Calibration data: loading, validation against the model's inputs, and the held-out split.

Accepted sources (``--calib`` on the command line, ``calibration=`` in the API):

- an ``.npz`` file: one array per input name; the first axis of every array indexes samples. An
  array with the input's rank gives samples of batch 1 (``x[i:i+1]``); an array with one axis
  more gives ``x[i]`` (each sample carries its own batch axis).
- a directory of ``.npz`` files (each read as above, in name order), or of ``.npy`` files for a
  model with one input.
- a Python iterable of input dicts (one dict = one sample), or a callable taking no arguments
  that returns such an iterable.
- ``"random"``: synthetic inputs from the signature; accuracy is then unknown (a loud warning,
  and the report says so).

The last quarter of the samples (at least one) is held out for the accuracy gate and never used
for calibration; calibration takes the first ``--calib-samples`` of the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.inputs import index_bounds, synthetic_inputs
from ai_vmm.runtime.artifact import TensorSpec
from ai_vmm.runtime.errors import InputError

Sample = dict[str, np.ndarray]
RANDOM = "random"
MAX_READ = 5000
"""At most this many items are read from an iterable or callable (a generator may be endless)."""
RANDOM_CALIBRATION = 32
RANDOM_HELD_OUT = 16
CalibrationSource = str | Path | Iterable[dict[str, Any]] | Callable[[], Iterable[dict[str, Any]]]
"""What ``calibration=`` accepts (see the module docstring)."""


@dataclass(frozen=True)
class CalibrationData:
    """Calibration data as the user gave it, read into memory, with a digest for the cache key.

    ``records`` are what the source held (``name -> array`` per file or item); ``samples_for``
    turns them into per-sample input dicts once the model's inputs are known.
    """

    kind: str
    """``npz``, ``directory``, ``iterable``, ``callable`` or ``random``."""
    description: str
    records: tuple[dict[str, np.ndarray], ...] = field(default=(), compare=False, repr=False)
    stacked: bool = False
    """Whether the first axis of every array indexes samples (files) or not (Python items)."""
    sha256: str = ""

    @property
    def is_random(self) -> bool:
        return self.kind == RANDOM

    def to_json(self) -> dict[str, Any]:
        """What the manifest and cache key record: the content digest, never a local path."""
        return {"kind": self.kind, "sha256": self.sha256}


@dataclass(frozen=True)
class CalibrationSplit:
    """Validated samples: calibration first, held-out for the accuracy gate."""

    calibration: tuple[Sample, ...]
    held_out: tuple[Sample, ...]
    random: bool
    description: str

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.description,
            "calibration_samples": len(self.calibration),
            "held_out_samples": len(self.held_out),
            "random": self.random,
        }


def load_calibration(source: Any) -> CalibrationData:
    """Read calibration data from a path, ``"random"``, an iterable or a callable.

    Raises:
        InputError: the source does not exist, is empty, or holds something else than arrays.
    """
    if isinstance(source, CalibrationData):
        return source
    if isinstance(source, str) and source == RANDOM:
        return CalibrationData(RANDOM, "random inputs (--calib random)", sha256=RANDOM)
    if isinstance(source, str | Path):
        return _load_path(Path(source))
    if callable(source):
        try:
            produced = source()
        except Exception as exc:
            raise InputError(
                f"the calibration callable raised {type(exc).__name__}: {exc}"
            ) from exc
        return _from_items(produced, "callable", f"callable {getattr(source, '__name__', '?')}")
    if isinstance(source, Iterable) and not isinstance(source, dict | bytes):
        return _from_items(source, "iterable", f"Python {type(source).__name__}")
    raise InputError(
        f"calibration data of type {type(source).__name__} is not understood: give an .npz file, "
        "a directory of .npz/.npy files, an iterable of input dicts, a callable, or 'random'"
    )


def split_samples(
    data: CalibrationData,
    inputs: tuple[TensorSpec, ...],
    calib_samples: int,
    model: Any = None,
) -> CalibrationSplit:
    """Samples checked against ``inputs``; the last quarter held out, calibration capped.

    Raises:
        InputError: a sample's names, dtypes or shapes do not fit the model (the message names
            the sample, the input and the mismatch), or fewer than two samples were given.
    """
    if data.is_random:
        bounds = index_bounds(model) if model is not None else {}
        samples = []
        for seed in range(RANDOM_CALIBRATION + RANDOM_HELD_OUT):
            sample = synthetic_inputs(inputs, bounds, seed=1000 + seed)
            if sample is None:
                raise InputError("--calib random: the model has non-tensor inputs")
            samples.append(sample)
        return CalibrationSplit(
            tuple(samples[:RANDOM_CALIBRATION][:calib_samples]),
            tuple(samples[RANDOM_CALIBRATION:]),
            True,
            data.description,
        )
    samples = _samples(single_input_records(data, inputs), inputs)
    for index, sample in enumerate(samples):
        check_sample(sample, inputs, f"{data.description}: sample {index}")
    if len(samples) < 2:
        raise InputError(
            f"{data.description}: {len(samples)} calibration sample(s); at least 2 are needed "
            "(the last quarter is held out to measure accuracy)"
        )
    held = max(1, len(samples) // 4)
    calibration = samples[: len(samples) - held][:calib_samples]
    return CalibrationSplit(
        tuple(calibration), tuple(samples[len(samples) - held :]), False, data.description
    )


def check_sample(sample: dict[str, Any], inputs: Sequence[TensorSpec], where: str) -> None:
    """Check one sample's names, dtypes and shapes against the model's inputs.

    Raises:
        InputError: naming the sample, the input and what differs.
    """
    expected = {spec.name: spec for spec in inputs if spec.kind == "tensor"}
    missing = sorted(set(expected) - set(sample))
    unexpected = sorted(set(sample) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if unexpected:
            parts.append(f"unknown name(s) {', '.join(unexpected)}")
        raise InputError(
            f"{where}: {'; '.join(parts)} (the model's inputs: {', '.join(sorted(expected))})"
        )
    for name, spec in expected.items():
        value = sample[name]
        if not isinstance(value, np.ndarray):
            raise InputError(f"{where}: input '{name}' is a {type(value).__name__}, not an array")
        if spec.dtype and str(value.dtype) != spec.dtype:
            raise InputError(
                f"{where}: input '{name}' has dtype {value.dtype}, the model wants {spec.dtype} "
                f"(convert with .astype(np.{spec.dtype}))"
            )
        if spec.shape is None:
            continue
        if value.ndim != len(spec.shape):
            raise InputError(
                f"{where}: input '{name}' has shape {list(value.shape)} (rank {value.ndim}), the "
                f"model wants rank {len(spec.shape)}: {_shape_text(spec.shape)}"
            )
        for axis, (size, dim) in enumerate(zip(value.shape, spec.shape, strict=True)):
            bad = (isinstance(dim, int) and size != dim) or (
                isinstance(dim, dict)
                and not int(dim.get("min", 0)) <= size <= int(dim.get("max", size))
            )
            if bad:
                raise InputError(
                    f"{where}: input '{name}' has shape {list(value.shape)}, the model wants "
                    f"{_shape_text(spec.shape)} (axis {axis} differs)"
                )


def _shape_text(shape: tuple[Any, ...]) -> str:
    def one(dim: Any) -> str:
        if isinstance(dim, dict):
            return f"{dim.get('min', 0)}..{dim.get('max', '?')}"
        return "?" if dim is None else str(dim)

    return "[" + ",".join(one(d) for d in shape) + "]"


def _samples(data: CalibrationData, inputs: tuple[TensorSpec, ...]) -> list[Sample]:
    if not data.stacked:
        return [dict(record) for record in data.records]
    ranks = {spec.name: len(spec.shape) for spec in inputs if spec.shape is not None}
    samples: list[Sample] = []
    for number, record in enumerate(data.records):
        counts = {name: int(array.shape[0]) if array.ndim else 1 for name, array in record.items()}
        if len(set(counts.values())) > 1:
            raise InputError(
                f"{data.description}: file {number} holds different sample counts per input "
                f"(first axis: {counts}); every array's first axis indexes the same samples"
            )
        count = next(iter(counts.values()), 0)
        for i in range(count):
            sample: Sample = {}
            for name, array in record.items():
                keep_batch = array.ndim == ranks.get(name, array.ndim - 1)
                sample[name] = array[i : i + 1] if keep_batch else array[i]
            samples.append(sample)
    return samples


def _load_path(path: Path) -> CalibrationData:
    if not path.exists():
        raise InputError(f"calibration data {path} does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.npz")) or sorted(path.glob("*.npy"))
        if not files:
            raise InputError(f"calibration directory {path} holds no .npz or .npy files")
        records = [_read_file(f) for f in files]
        return _digested(
            CalibrationData("directory", f"{path} ({len(files)} files)", tuple(records), True)
        )
    if path.suffix not in (".npz", ".npy"):
        raise InputError(f"calibration data {path}: expected an .npz file or a directory")
    return _digested(CalibrationData("npz", str(path), (_read_file(path),), True))


def _read_file(path: Path) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as exc:
        raise InputError(f"calibration file {path} is not readable: {exc}") from exc


def _from_items(items: Any, kind: str, description: str) -> CalibrationData:
    if not isinstance(items, Iterable) or isinstance(items, dict):
        raise InputError(f"{description} must give an iterable of input dicts")
    records = []
    for number, item in enumerate(items):
        if number >= MAX_READ:
            break
        if not isinstance(item, dict):
            raise InputError(
                f"{description}: item {number} is a {type(item).__name__}, "
                "not a dict of input name -> array"
            )
        records.append({str(k): np.asarray(v) for k, v in item.items()})
    if not records:
        raise InputError(f"{description} gave no calibration samples")
    return _digested(CalibrationData(kind, description, tuple(records), False))


def _digested(data: CalibrationData) -> CalibrationData:
    digest = hashlib.sha256()
    for record in data.records:
        for name in sorted(record):
            array = np.ascontiguousarray(record[name])
            digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
            digest.update(array.tobytes())
    return CalibrationData(
        data.kind, data.description, data.records, data.stacked, digest.hexdigest()
    )


def single_input_records(data: CalibrationData, inputs: tuple[TensorSpec, ...]) -> CalibrationData:
    """Name the arrays of ``.npy`` files after the model's only input."""
    if not any("" in record for record in data.records):
        return data
    tensors = [spec.name for spec in inputs if spec.kind == "tensor"]
    if len(tensors) != 1:
        raise InputError(
            f"{data.description}: .npy files carry no input names, and the model has "
            f"{len(tensors)} inputs ({', '.join(tensors)}): use .npz files keyed by input name"
        )
    renamed = tuple({tensors[0] if k == "" else k: v for k, v in r.items()} for r in data.records)
    return CalibrationData(data.kind, data.description, renamed, data.stacked, data.sha256)
