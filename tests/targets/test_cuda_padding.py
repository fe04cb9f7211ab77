"""A batch below the export's least one, run padded (``targets/cuda_checks.batch_padding``
at build time, ``runtime/executors/cuda_padding.Padding`` in the executor): on the leading axis
and on another one (Silero VAD's streaming state), never where rows mix.

Packages are built as eager ``torch.export`` programs (the cuda target's CPU mode); the export
is replaced by one with hints only, which raises every dynamic lower bound to 2 (what torch 2.11
did to the zoo Llama on the H200, and torch 2.13 does to Silero's batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from cuda_models import stateful, two_inputs  # noqa: E402

from ai_vmm.runtime.errors import InputError  # noqa: E402
from ai_vmm.runtime.executors import create_executor  # noqa: E402
from ai_vmm.runtime.executors.cuda_padding import Padding  # noqa: E402
from ai_vmm.targets import cuda_build  # noqa: E402
from ai_vmm.targets.base import TargetOptions  # noqa: E402


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


class Mixing(torch.nn.Module):
    """Rows that mix (each row minus the batch mean): padding the batch would change them."""

    arg_names = ("x", "ids")

    def forward(self, x: Any, ids: Any) -> Any:
        return (x - x.mean(0, keepdim=True) + ids.float(),)


def _hinted(module: Any, example: list[Any], arg_names: list[str], *_: Any) -> Any:
    """Export with hints only: every lower bound comes out 2 (what torch 2.11 gave the zoo
    Llama on the H200 whatever was asked)."""
    from torch.export import Dim

    shapes = {n: {0: Dim.DYNAMIC, 1: Dim.DYNAMIC} for n in arg_names}
    program = torch.export.export(module, tuple(example), dynamic_shapes=shapes, strict=False)
    return program, "exported with hints (test)"


@pytest.mark.parametrize("mixing", [False, True])
def test_a_batch_below_the_exports_range_runs_padded_where_rows_do_not_mix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mixing: bool
) -> None:
    from ai_vmm.targets.cuda_convert import to_torch

    path = two_inputs(tmp_path / "two.onnx")
    model = ir.load(path)
    module = Mixing() if mixing else to_torch(model, torch.float32).eval()
    monkeypatch.setattr(cuda_build, "export", _hinted)
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {}})
    payload = cuda_build._build(
        module, "onnx", model, options, _dir(tmp_path / "p"), "fp32", True, "cpu"
    )
    assert payload.config["inputs"][0]["ranges"]["0"][0] == 2
    executor = create_executor(
        "cuda", tmp_path / "p" / payload.entry, "cpu", payload.config, ("y",)
    )
    rng = np.random.default_rng(0)
    x, ids = rng.standard_normal((1, 6)).astype(np.float32), rng.integers(0, 9, (1, 6))
    if mixing:
        assert "pad_batch" not in payload.config
        with pytest.raises(InputError, match=r"axis 0 is 1, outside the range 2\.\."):
            executor.run({"x": x, "ids": ids})
        return
    assert payload.config["pad_batch"] == {
        "from": 1,
        "to": 2,
        "inputs": {"x": 0, "ids": 0},
        "outputs": {"y": 0},
    }
    session = ort.InferenceSession(str(path))
    for batch in (1, 3):
        xb, idsb = np.repeat(x, batch, 0) + np.arange(batch)[:, None], np.repeat(ids, batch, 0)
        got = executor.run({"x": xb.astype(np.float32), "ids": idsb})["y"]
        want = session.run(None, {"x": xb.astype(np.float32), "ids": idsb})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6)
    kept = executor.run({"x": torch.from_numpy(x), "ids": torch.from_numpy(ids)})["y"]
    assert kept.shape == (1, 6)


def _hinted_onnx_axes(
    module: Any, example: list[Any], arg_names: list[str], dims: Any, inputs: Any
) -> Any:
    """Export with hints on every dynamic ONNX axis: each lower bound comes out 2 (what torch
    2.13 gives Silero VAD's streaming model's batch)."""
    from torch.export import Dim

    shapes = {
        n: {a: Dim.DYNAMIC for a, d in enumerate(v.shape) if not isinstance(d, int)}
        for n, v in zip(arg_names, inputs, strict=True)
    }
    program = torch.export.export(module, tuple(example), dynamic_shapes=shapes, strict=False)
    return program, "exported with hints (test)"


def test_a_batch_on_another_axis_than_the_first_runs_padded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ai_vmm.targets.cuda_convert import to_torch

    path = stateful(tmp_path / "stateful.onnx")
    model = ir.load(path)
    module = to_torch(model, torch.float32).eval()
    monkeypatch.setattr(cuda_build, "export", _hinted_onnx_axes)
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {}})
    payload = cuda_build._build(
        module, "onnx", model, options, _dir(tmp_path / "p"), "fp32", True, "cpu"
    )
    assert payload.config["inputs"][1]["ranges"]["1"][0] == 2
    assert payload.config["pad_batch"] == {
        "from": 1,
        "to": 2,
        "inputs": {"x": 0, "state": 1},
        "outputs": {"y": 0, "new_state": 1},
    }
    executor = create_executor(
        "cuda", tmp_path / "p" / payload.entry, "cpu", payload.config, ("y", "new_state")
    )
    session = ort.InferenceSession(str(path))
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        feeds = {
            "x": rng.standard_normal((batch, 5)).astype(np.float32),
            "state": rng.standard_normal((2, batch, 4)).astype(np.float32),
            "sr": np.array(16000, np.int64),
        }
        got = executor.run(feeds)
        for name, want in zip(("y", "new_state"), session.run(None, feeds), strict=True):
            assert got[name].shape == want.shape
            np.testing.assert_allclose(got[name], want, rtol=1e-6)
    kept = executor.run({k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()})
    assert kept["new_state"].shape == (2, 3, 4)
    one = {k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()}
    one["x"], one["state"] = one["x"][:1], one["state"][:, :1]
    assert executor.run(one)["new_state"].shape == (2, 1, 4)
    with pytest.raises(InputError, match="missing input 'state'"):
        executor.run({"x": one["x"], "sr": one["sr"]})


def test_padding_repeats_the_last_row_along_each_inputs_own_axis_and_cuts_back() -> None:
    pad = Padding.of(
        {"from": 1, "to": 4, "inputs": {"x": 0, "state": 1}, "outputs": {"y": 0, "s": 1}},
        ["x", "state", "sr"],
        ["y", "s"],
    )
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    state = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    sr = np.array(16000)
    padded, rows = pad.pad({"x": x, "state": state, "sr": sr}, torch)
    assert rows == 2 and padded["sr"] is sr
    np.testing.assert_array_equal(padded["x"], x[[0, 1, 1, 1]])
    np.testing.assert_array_equal(padded["state"], state[:, [0, 1, 1, 1]])
    as_torch, _ = pad.pad({"x": torch.from_numpy(x), "state": torch.from_numpy(state)}, torch)
    np.testing.assert_array_equal(as_torch["state"].numpy(), padded["state"])
    cut = pad.cut({"y": padded["x"], "s": torch.from_numpy(padded["state"])}, 2, torch)
    np.testing.assert_array_equal(cut["y"], x)
    np.testing.assert_array_equal(cut["s"].numpy(), state)


def test_padding_leaves_batches_it_does_not_cover_alone() -> None:
    """At or above the least batch, rows that disagree, or an old payload (axis 0 for all)."""
    pad = Padding.of({"from": 1, "to": 2}, ["x", "ids"], ["y"])
    assert (pad.inputs, pad.outputs) == ({"x": 0, "ids": 0}, {"y": 0})
    for feed in (
        {"x": np.zeros((2, 3)), "ids": np.zeros((2, 3))},  # at the least batch
        {"x": np.zeros((1, 3)), "ids": np.zeros((3, 3))},  # rows that disagree
    ):
        padded, rows = pad.pad(feed, torch)
        assert padded is feed and rows is None
    padded, rows = pad.pad({"x": np.zeros((1, 3)), "ids": np.ones((1, 3))}, torch)
    assert rows == 1 and padded["ids"].shape == (2, 3) and padded["ids"].all()


@pytest.mark.slow
def test_a_sample_batch_the_padding_would_cover_gets_a_static_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Padded, a batch of 1 computes 2 rows (PP-OCRv4's detector on an H100: 2.6x the eager
    module's time): a sample at batch 1 gets its own package, which a call of that batch runs
    where ``static_dispatch`` is on (off: padded on the dynamic package); other batches run on
    the dynamic package either way."""
    from ai_vmm.targets.cuda_convert import to_torch

    path = two_inputs(tmp_path / "two.onnx")
    model = ir.load(path)
    monkeypatch.setattr(cuda_build, "export", _hinted)
    options = TargetOptions(
        extra={"input_bounds": {}, "sample_dims": {}, "sample_sizes": {"batch": [1]}}
    )
    module = to_torch(model, torch.float32).eval()
    payload = cuda_build._build(
        module, "onnx", model, options, _dir(tmp_path / "p"), "fp32", False, "cpu"
    )
    config = payload.config
    assert config["pad_batch"]["from"] == 1 and config["pad_batch"]["to"] == 2
    assert config["static_batches"]["1"]["inputs"][0]["shape"][0] == 1, config.get("static_note")
    session = ort.InferenceSession(str(path))
    rng = np.random.default_rng(1)
    for dispatch, want_calls in ((False, {}), (True, {1: 2})):
        executor = create_executor(
            "cuda",
            tmp_path / "p" / payload.entry,
            "cpu",
            {**config, "static_dispatch": dispatch},
            ("y",),
        )
        for batch, seq in ((1, 6), (3, 6), (1, 9)):
            feed = {
                "x": rng.standard_normal((batch, seq)).astype(np.float32),
                "ids": rng.integers(0, 9, (batch, seq)),
            }
            got = executor.run(feed)["y"]
            np.testing.assert_allclose(got, session.run(None, feed)[0], rtol=1e-6)
        assert executor.static_calls == want_calls  # type: ignore[attr-defined]
