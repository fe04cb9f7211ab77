"""The samples a deployment is measured on: the user's, checked against the model, or made up.

Accepted (``samples=`` of ``VMM.deploy``; ``--samples`` of ``vmmc deploy``), read exactly as
``ai_vmm.compile(samples=...)`` reads them (``ai_vmm.samples``):

- a dict of arrays: one sample (one call's inputs, batch axis included);
- a list of such dicts: one sample each;
- an ``.npz`` file: one sample, one array per input name;
- a directory of ``.npz`` files: one sample per file, in name order.

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

from ai_vmm.calibration import check_sample
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
    items, description = read_samples(source)
    if not items:
        raise InputError(f"{description}: no samples")
    items = items[:MAX_SAMPLES]
    for index, sample in enumerate(items):
        check_sample(sample, specs, f"{description}: sample {index}")
    return Samples(tuple(items), description, False, digest_of(items))


def read_samples(source: Any) -> tuple[list[Sample], str]:
    """The samples of ``source`` as given (compile's reader), and where they came from.

    Raises:
        InputError: a source that cannot be read or holds something else than arrays.
    """
    from ai_vmm.samples import load_samples as read

    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        for index, item in enumerate(source):
            if not isinstance(item, Mapping):
                raise InputError(
                    f"samples: item {index} is a {type(item).__name__}, "
                    "not a dict of input name -> array"
                )
    elif not isinstance(source, str | Path | Mapping):
        raise InputError(
            f"samples of type {type(source).__name__} are not understood: give a dict of "
            "arrays, a list of such dicts, an .npz file or a directory of .npz files"
        )
    loaded = read(source)
    return [dict(item) for item in loaded.items], loaded.description


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
