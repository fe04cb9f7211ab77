"""The samples a deployment is measured on: the user's, checked against the model, or made up.

Accepted (``samples=`` of ``VMM.deploy``; ``--samples`` of ``vmmc deploy``):

- a dict of arrays: like an ``.npz`` file: an array with the input's rank is a batch of
  one-item samples (``x[i:i+1]``), an array with one axis more is a list of samples (``x[i]``);
- a list of such dicts: one dict, one sample, taken as it is;
- an ``.npz`` path or a directory of ``.npz`` files (read the same way as calibration data,
  ``docs/quantization.md``).

Without samples, inputs are synthesised from the signature (``ai_vmm.inputs``) and every figure
says so: latency is then measured at made-up shapes, and accuracy on made-up values is
indicative only (static INT8, which calibrates on the samples, is not tried).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.calibration import CalibrationData, check_sample, load_calibration
from ai_vmm.inputs import synthetic_inputs
from ai_vmm.runtime.artifact import TensorSpec
from ai_vmm.runtime.errors import InputError

Sample = dict[str, np.ndarray]
SYNTHETIC_COUNT = 8
MAX_SAMPLES = 256
"""At most this many samples are kept (the first ones): measurement time grows with them."""


@dataclass(frozen=True)
class Samples:
    """Checked samples and where they came from."""

    items: tuple[Sample, ...]
    description: str
    synthetic: bool
    digest: str

    def __len__(self) -> int:
        return len(self.items)

    def batched(self, batch: int) -> list[Sample]:
        """Each sample repeated ``batch`` times along axis 0 (its batch axis)."""
        if batch == 1:
            return list(self.items)
        return [
            {name: np.concatenate([array] * batch, axis=0) for name, array in sample.items()}
            for sample in self.items
        ]

    def to_json(self) -> dict[str, Any]:
        shapes = sorted({_shape_key(s) for s in self.items})
        return {
            "description": self.description,
            "count": len(self.items),
            "synthetic": self.synthetic,
            "sha256": self.digest,
            "shapes": shapes[:8] + (["..."] if len(shapes) > 8 else []),
        }


def load_samples(
    source: Any, inputs: Sequence[TensorSpec], bounds: Mapping[str, Any] | None = None
) -> Samples:
    """The samples of ``source`` checked against ``inputs``; synthetic ones when ``None``.

    Raises:
        InputError: a source that cannot be read, or a sample whose names, dtypes or shapes do
            not fit the model (naming the sample, the input and the difference).
    """
    specs = tuple(inputs)
    if source is None:
        return _synthetic(specs, dict(bounds or {}))
    items, description = _read(source, specs)
    if not items:
        raise InputError(f"{description}: no samples")
    items = items[:MAX_SAMPLES]
    for index, sample in enumerate(items):
        check_sample(sample, specs, f"{description}: sample {index}")
    return Samples(tuple(items), description, False, digest_of(items))


def _read(source: Any, specs: tuple[TensorSpec, ...]) -> tuple[list[Sample], str]:
    if isinstance(source, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in source.items()}
        return _unstack(arrays, specs), "samples dict"
    if isinstance(source, str | Path):
        data = load_calibration(source)
        return _from_data(data, specs), data.description
    if isinstance(source, Sequence) and not isinstance(source, bytes):
        items = []
        for index, item in enumerate(source):
            if not isinstance(item, Mapping):
                raise InputError(
                    f"samples: item {index} is a {type(item).__name__}, "
                    "not a dict of input name -> array"
                )
            items.append({str(k): np.asarray(v) for k, v in item.items()})
        return items, f"{len(items)} samples (list)"
    raise InputError(
        f"samples of type {type(source).__name__} are not understood: give a dict of arrays, "
        "a list of such dicts, an .npz file or a directory of .npz files"
    )


def _from_data(data: CalibrationData, specs: tuple[TensorSpec, ...]) -> list[Sample]:
    if not data.stacked:
        return [dict(r) for r in data.records]
    tensors = [s.name for s in specs if s.kind == "tensor"]
    items: list[Sample] = []
    for record in data.records:
        if "" in record:  # .npy files carry no input name
            if len(tensors) != 1:
                raise InputError(
                    f"{data.description}: .npy files carry no input names and the model has "
                    f"{len(tensors)} inputs: use .npz files keyed by input name"
                )
            record = {tensors[0]: record[""]}
        items += _unstack(record, specs)
    return items


def _unstack(arrays: Mapping[str, np.ndarray], specs: tuple[TensorSpec, ...]) -> list[Sample]:
    ranks = {s.name: len(s.shape) for s in specs if s.shape is not None}
    counts = {name: int(a.shape[0]) if a.ndim else 1 for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise InputError(
            f"samples: arrays hold different sample counts on their first axis ({counts}); "
            "every array's first axis indexes the same samples"
        )
    count = next(iter(counts.values()), 0)
    items: list[Sample] = []
    for i in range(count):
        sample: Sample = {}
        for name, array in arrays.items():
            keep_batch = array.ndim == ranks.get(name, array.ndim - 1)
            sample[name] = array[i : i + 1] if keep_batch else array[i]
        items.append(sample)
    return items


def _synthetic(specs: tuple[TensorSpec, ...], bounds: dict[str, Any]) -> Samples:
    items = []
    for seed in range(SYNTHETIC_COUNT):
        sample = synthetic_inputs(specs, bounds, seed=seed)
        if sample is None:
            raise InputError(
                "the model has non-tensor inputs: give samples= so that it can be measured"
            )
        items.append(sample)
    return Samples(
        tuple(items),
        f"{SYNTHETIC_COUNT} synthetic samples from the signature (no samples given)",
        True,
        "synthetic:" + digest_of(items),
    )


def digest_of(items: Sequence[Mapping[str, np.ndarray]]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every sample, in order."""
    digest = hashlib.sha256()
    for sample in items:
        for name in sorted(sample):
            array = np.ascontiguousarray(sample[name])
            digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def batch_axis_ok(specs: Sequence[TensorSpec], samples: Samples, batch: int) -> str | None:
    """Why ``batch`` cannot be tried on these inputs (``None``: it can).

    Batching repeats each sample along axis 0, so every input needs a dynamic axis 0 (a symbol
    or a range reaching ``batch``) and every sample a leading size of 1.
    """
    for spec in specs:
        if spec.kind != "tensor" or not spec.shape:
            return f"input '{spec.name}' has no known rank"
        dim = spec.shape[0]
        if isinstance(dim, int):
            return f"input '{spec.name}' has a fixed axis 0 ({dim})"
        if isinstance(dim, dict) and int(dim.get("max", batch)) < batch:
            return f"input '{spec.name}' allows at most {dim.get('max')} on axis 0"
    if any(a.ndim == 0 or a.shape[0] != 1 for s in samples.items for a in s.values()):
        return "the samples are not of batch 1"
    return None


def _shape_key(sample: Sample) -> str:
    return ", ".join(f"{k}{list(v.shape)}" for k, v in sorted(sample.items()))
