"""Samples: the forms the API takes, checked against the model's inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ai_vmm import InputError
from ai_vmm.deploy.samples import batch_axis_ok, load_samples
from ai_vmm.runtime.artifact import TensorSpec

SPECS = (
    TensorSpec("ids", "int64", ("batch", "seq")),
    TensorSpec("mask", "float32", ("batch", "seq")),
)


def _sample(length: int) -> dict[str, np.ndarray]:
    return {
        "ids": np.arange(length, dtype=np.int64)[None],
        "mask": np.ones((1, length), np.float32),
    }


def test_list_of_dicts_is_taken_as_is() -> None:
    samples = load_samples([_sample(3), _sample(5)], SPECS)
    assert len(samples) == 2 and not samples.synthetic
    assert samples.items[1]["ids"].shape == (1, 5)
    assert samples.to_json()["shapes"] == ["ids[1, 3], mask[1, 3]", "ids[1, 5], mask[1, 5]"]


def test_dict_npz_and_directory_read_as_compile_reads_them(tmp_path: Path) -> None:
    one = {"ids": np.zeros((4, 7), np.int64), "mask": np.ones((4, 7), np.float32)}
    samples = load_samples(one, SPECS)  # a dict is one call's inputs: batch 4 kept
    assert len(samples) == 1 and samples.items[0]["ids"].shape == (4, 7)
    np.savez(tmp_path / "s.npz", **one)
    from_file = load_samples(tmp_path / "s.npz", SPECS)
    assert from_file.digest == samples.digest
    (tmp_path / "dir").mkdir()
    np.savez(tmp_path / "dir" / "a.npz", **_sample(3))
    np.savez(tmp_path / "dir" / "b.npz", **_sample(5))
    both = load_samples(tmp_path / "dir", SPECS)
    assert len(both) == 2 and both.digest == load_samples([_sample(3), _sample(5)], SPECS).digest


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([{"ids": np.zeros((1, 3), np.int64)}], "missing input(s) mask"),
        ([{**_sample(3), "extra": np.zeros(1)}], "unknown name(s) extra"),
        ([{**_sample(3), "ids": np.zeros((1, 3), np.int32)}], "has dtype int32"),
        ([{**_sample(3), "ids": np.zeros((3,), np.int64)}], "rank 1"),
        ([3], "item 0 is a int"),
        (42, "not understood"),
    ],
)
def test_samples_that_do_not_fit(bad: object, message: str) -> None:
    with pytest.raises(InputError) as info:
        load_samples(bad, SPECS)
    assert message in str(info.value)


def test_synthetic_when_none_given() -> None:
    samples = load_samples(None, SPECS)
    assert samples.synthetic and len(samples) == 8
    assert "synthetic" in samples.description and samples.digest.startswith("synthetic:")


def test_batching() -> None:
    samples = load_samples([_sample(3)], SPECS)
    assert batch_axis_ok(SPECS, samples, 8) is None
    assert samples.batched(4)[0]["ids"].shape == (4, 3)
    fixed = (TensorSpec("x", "float32", (1, 3)),)
    one = load_samples([{"x": np.zeros((1, 3), np.float32)}], fixed)
    assert batch_axis_ok(fixed, one, 2) == "input 'x' has a fixed axis 0 (1)"
    bounded = (TensorSpec("x", "float32", ({"min": 1, "max": 4}, 3)),)
    assert "at most 4" in str(batch_axis_ok(bounded, one, 8))
