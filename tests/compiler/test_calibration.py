"""Calibration data: every accepted format, the held-out split, and clear errors on mismatches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ai_vmm.calibration import load_calibration, split_samples
from ai_vmm.runtime.artifact import TensorSpec
from ai_vmm.runtime.errors import InputError

PIXELS = (TensorSpec("pixels", "float32", ("batch", 1, 8, 8)),)
TWO = (
    TensorSpec("ids", "int64", ("batch", "seq")),
    TensorSpec("mask", "float32", ("batch", "seq")),
)


def _stack(n: int) -> np.ndarray:
    return np.arange(n * 64, dtype=np.float32).reshape(n, 1, 8, 8)


def test_npz_stack_with_the_input_rank_gives_batch_one_samples(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", pixels=_stack(8))
    split = split_samples(load_calibration(tmp_path / "c.npz"), PIXELS, 300)
    assert len(split.calibration) == 6 and len(split.held_out) == 2
    assert split.calibration[0]["pixels"].shape == (1, 1, 8, 8)
    # Held-out samples are the last ones and never calibrate.
    np.testing.assert_array_equal(split.held_out[-1]["pixels"][0], _stack(8)[7])
    calibrated = {s["pixels"].tobytes() for s in split.calibration}
    assert not calibrated & {s["pixels"].tobytes() for s in split.held_out}


def test_npz_with_one_more_axis_gives_one_batch_per_sample(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", pixels=_stack(12).reshape(4, 3, 1, 8, 8))
    split = split_samples(load_calibration(str(tmp_path / "c.npz")), PIXELS, 300)
    assert [s["pixels"].shape for s in split.calibration] == [(3, 1, 8, 8)] * 3
    assert len(split.held_out) == 1


def test_calib_samples_caps_calibration_not_held_out(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", pixels=_stack(40))
    split = split_samples(load_calibration(tmp_path / "c.npz"), PIXELS, 5)
    assert len(split.calibration) == 5 and len(split.held_out) == 10


def test_directory_of_npz_and_of_npy(tmp_path: Path) -> None:
    npz, npy = tmp_path / "npz", tmp_path / "npy"
    npz.mkdir()
    npy.mkdir()
    for i in range(3):
        np.savez(npz / f"{i}.npz", pixels=_stack(2))
        np.save(npy / f"{i}.npy", _stack(2))
    for folder in (npz, npy):
        data = load_calibration(folder)
        assert data.kind == "directory"
        split = split_samples(data, PIXELS, 300)
        assert len(split.calibration) + len(split.held_out) == 6


def test_npy_files_need_a_single_input_model(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((2, 4), np.int64))
    np.save(tmp_path / "b.npy", np.zeros((2, 4), np.int64))
    with pytest.raises(InputError, match=r"\.npy files carry no input names.*ids, mask"):
        split_samples(load_calibration(tmp_path), TWO, 300)


def test_iterable_and_callable() -> None:
    items = [
        {"ids": np.ones((1, n), np.int64), "mask": np.ones((1, n), np.float32)} for n in (3, 5, 7)
    ]
    from_list = load_calibration(items)
    from_callable = load_calibration(lambda: iter(items))
    assert from_list.kind == "iterable" and from_callable.kind == "callable"
    assert from_list.sha256 == from_callable.sha256  # same content, same cache key
    split = split_samples(from_callable, TWO, 300)
    assert [s["ids"].shape[1] for s in split.calibration] == [3, 5]


def test_digest_follows_content(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", pixels=_stack(4))
    np.savez(tmp_path / "b.npz", pixels=_stack(4) + 1)
    assert (
        load_calibration(tmp_path / "a.npz").sha256 != load_calibration(tmp_path / "b.npz").sha256
    )
    assert load_calibration(tmp_path / "a.npz").to_json()["sha256"] == (
        load_calibration(tmp_path / "a.npz").sha256
    )


def test_random_is_marked() -> None:
    split = split_samples(load_calibration("random"), PIXELS, 300)
    assert split.random and split.calibration and split.held_out
    assert split.calibration[0]["pixels"].dtype == np.float32


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ({"pixel": _stack(1)}, r"missing input\(s\) pixels; unknown name\(s\) pixel"),
        (
            {"pixels": _stack(1).astype(np.float64)},
            r"input 'pixels' has dtype float64, the model wants float32",
        ),
        (
            {"pixels": np.zeros((1, 8, 8), np.float32)},
            r"input 'pixels' has shape \[1, 8, 8\] \(rank 3\), the model wants rank 4",
        ),
        (
            {"pixels": np.zeros((1, 1, 8, 9), np.float32)},
            r"input 'pixels' has shape \[1, 1, 8, 9\], the model wants \[batch,1,8,8\] \(axis 3",
        ),
    ],
    ids=["names", "dtype", "rank", "shape"],
)
def test_mismatch_names_the_sample_input_and_difference(
    sample: dict[str, np.ndarray], message: str
) -> None:
    good = {"pixels": _stack(1)}
    with pytest.raises(InputError, match=r"Python list: sample 2: " + message):
        split_samples(load_calibration([good, good, sample, good]), PIXELS, 300)


def test_too_few_samples_and_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 2 are needed"):
        split_samples(load_calibration([{"pixels": _stack(1)}]), PIXELS, 300)
    with pytest.raises(InputError, match="does not exist"):
        load_calibration(tmp_path / "missing.npz")
    with pytest.raises(InputError, match="item 0 is a int"):
        load_calibration([1, 2])
    with pytest.raises(InputError, match="no .npz or .npy files"):
        load_calibration(tmp_path)
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not readable"):
        load_calibration(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="different sample counts"):
        np.savez(tmp_path / "two.npz", ids=np.zeros((3, 4), np.int64), mask=np.zeros((2, 4)))
        split_samples(load_calibration(tmp_path / "two.npz"), TWO, 300)
