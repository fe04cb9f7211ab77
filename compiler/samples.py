"""Sample inputs: what the user really sends, for verification, timing and shape choice.

``vmmc compile --sample FILE.npz|DIR`` and ``ai_vmm.compile(..., samples=...)`` accept:

- a dict of arrays: one call's inputs (one sample);
- a list (or other iterable) of such dicts: several samples;
- an ``.npz`` file: one sample, one array per input name, exactly as ``vmmc run --inputs`` reads
  it (the arrays keep their batch axis; unlike ``--calib``, the first axis does not index
  samples);
- a directory of ``.npz`` files: one sample per file, in name order.

Every sample is checked against the model's signature before any work is done. Samples are
grouped by their input shapes (``shape_groups``): verification runs on every sample (up to
``MAX_VERIFY``), timing at each group's first sample, so the choice is made at the shapes the
user sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.calibration import check_sample
from ai_vmm.runtime.artifact import TensorSpec
from ai_vmm.runtime.errors import InputError

Sample = dict[str, np.ndarray]
SampleSource = str | Path | Mapping[str, Any] | Iterable[Mapping[str, Any]]
"""What ``samples=`` accepts (see the module docstring)."""

MAX_SAMPLES = 256
"""At most this many samples are read (an iterable may be endless)."""
MAX_VERIFY = 16
"""At most this many samples are compared with the reference."""


@dataclass(frozen=True)
class Samples:
    """Samples as given, with where they came from (for the report)."""

    items: tuple[Sample, ...]
    description: str

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.description,
            "count": len(self.items),
            "shapes": [
                {name: list(array.shape) for name, array in sorted(group[0].items())}
                for group in shape_groups(self.items)
            ],
        }


def load_samples(source: SampleSource | Samples) -> Samples:
    """Read samples from a dict, an iterable of dicts, an ``.npz`` file or a directory.

    Raises:
        InputError: the source does not exist, is empty, or holds something else than arrays.
    """
    if isinstance(source, Samples):
        return source
    if isinstance(source, str | Path):
        return _load_path(Path(source))
    if isinstance(source, Mapping):
        return Samples((_as_sample(source, "samples"),), "one sample (a dict of arrays)")
    if isinstance(source, Iterable) and not isinstance(source, bytes):
        items = []
        for number, item in enumerate(source):
            if number >= MAX_SAMPLES:
                break
            if not isinstance(item, Mapping):
                raise InputError(
                    f"samples: item {number} is a {type(item).__name__}, not a dict of input "
                    "name -> array"
                )
            items.append(_as_sample(item, f"samples: item {number}"))
        if not items:
            raise InputError("samples: the iterable gave no samples")
        return Samples(tuple(items), f"{len(items)} samples (Python {type(source).__name__})")
    raise InputError(
        f"samples of type {type(source).__name__} are not understood: give a dict of arrays, a "
        "list of them, an .npz file or a directory of .npz files"
    )


def check_samples(samples: Samples, inputs: tuple[TensorSpec, ...]) -> None:
    """Check every sample's names, dtypes and shapes against the model's inputs.

    Raises:
        InputError: naming the sample, the input and the mismatch.
    """
    for index, sample in enumerate(samples.items):
        check_sample(sample, inputs, f"{samples.description}: sample {index}")


def shape_groups(items: Iterable[Sample]) -> list[list[Sample]]:
    """Samples grouped by their input shapes, in first-seen order."""
    groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[Sample]] = {}
    for sample in items:
        key = tuple(sorted((name, tuple(np.shape(a))) for name, a in sample.items()))
        groups.setdefault(key, []).append(sample)
    return list(groups.values())


def _as_sample(item: Mapping[str, Any], where: str) -> Sample:
    sample: Sample = {}
    for name, value in item.items():
        if not isinstance(name, str):
            raise InputError(f"{where}: input names must be strings, got {name!r}")
        array = np.asarray(value)
        if array.dtype == np.dtype(object):
            raise InputError(f"{where}: input '{name}' is not a numeric or string array")
        sample[name] = array
    return sample


def _load_path(path: Path) -> Samples:
    if not path.exists():
        raise InputError(f"sample file {path} does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.npz"))[:MAX_SAMPLES]
        if not files:
            raise InputError(f"sample directory {path} holds no .npz files")
        return Samples(tuple(_read_npz(f) for f in files), f"{path} ({len(files)} files)")
    if path.suffix != ".npz":
        raise InputError(f"sample file {path}: expected an .npz file or a directory of them")
    return Samples((_read_npz(path),), str(path))


def _read_npz(path: Path) -> Sample:
    try:
        with np.load(path, allow_pickle=False) as archive:
            sample = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"sample file {path} is not a readable .npz file: {exc}") from exc
    if not sample:
        raise InputError(f"sample file {path} holds no arrays")
    return sample
