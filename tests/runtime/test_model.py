"""CompiledModel: input checks with clear messages, dynamic dims, thread safety."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

import ai_vmm
from ai_vmm.runtime import CompiledModel, InputError, load
from ai_vmm.runtime.artifact import TensorSpec
from ai_vmm.runtime.model import check_inputs
from tests_support import make_two_input_model


@pytest.fixture(scope="module", params=["onnxruntime:CPU", "openvino:CPU"])
def two_inputs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> CompiledModel:
    root = tmp_path_factory.mktemp("two")
    onnx.save(make_two_input_model(), root / "m.onnx")
    result = ai_vmm.compile(root / "m.onnx", request.param, root / "m.vmm", tune=False)
    return load(result.path)


def _feed(batch: int = 2, seq: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "ids": rng.integers(0, 50, (batch, seq)).astype(np.int64),
        "mask": np.ones((batch, seq), np.float32),
    }


def test_dynamic_dims_stay_dynamic(two_inputs: CompiledModel) -> None:
    for batch, seq in ((1, 1), (2, 5), (3, 17)):
        assert two_inputs(**_feed(batch, seq))["y"].shape == (batch, seq, 4)


def test_wrong_name(two_inputs: CompiledModel) -> None:
    feed = _feed()
    feed["input_ids"] = feed.pop("ids")
    with pytest.raises(InputError, match="unknown input 'input_ids'; the model takes ids: int64"):
        two_inputs.run(feed)


def test_missing_input(two_inputs: CompiledModel) -> None:
    feed = _feed()
    del feed["mask"]
    with pytest.raises(InputError, match="missing input 'mask'"):
        two_inputs.run(feed)


def test_wrong_dtype(two_inputs: CompiledModel) -> None:
    feed = _feed()
    feed["ids"] = feed["ids"].astype(np.int32)
    with pytest.raises(InputError, match=r"'ids' has dtype int32, the model expects int64"):
        two_inputs.run(feed)


def test_wrong_rank(two_inputs: CompiledModel) -> None:
    feed = _feed()
    feed["mask"] = feed["mask"][0]
    with pytest.raises(InputError, match=r"rank 1\), the model expects \[batch,seq\] \(rank 2\)"):
        two_inputs.run(feed)


def test_shared_symbol_must_agree(two_inputs: CompiledModel) -> None:
    feed = _feed(2, 5)
    feed["mask"] = np.ones((2, 6), np.float32)
    with pytest.raises(InputError, match="dimension 'seq' is 6 in input 'mask' but 5"):
        two_inputs.run(feed)


def test_fixed_dim_and_range_are_enforced() -> None:
    specs = (TensorSpec("x", "float32", (1, {"min": 1, "max": 8}, 3)),)
    check_inputs(specs, {"x": np.zeros((1, 8, 3), np.float32)})
    with pytest.raises(InputError, match="axis 0 must be 1"):
        check_inputs(specs, {"x": np.zeros((2, 4, 3), np.float32)})
    with pytest.raises(InputError, match="outside the compiled range 1..8"):
        check_inputs(specs, {"x": np.zeros((1, 9, 3), np.float32)})


def test_concurrent_calls_give_the_same_answers(two_inputs: CompiledModel) -> None:
    feeds = [_feed(1 + i % 3, 2 + i % 7) for i in range(32)]
    expected = [two_inputs.run(f)["y"] for f in feeds]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda f: two_inputs.run(f)["y"], feeds))
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(want, have)


def test_outputs_are_owned_arrays(two_inputs: CompiledModel) -> None:
    first = two_inputs.run(_feed(1, 3))["y"]
    snapshot = first.copy()
    two_inputs.run(_feed(1, 3) | {"mask": np.zeros((1, 3), np.float32)})
    np.testing.assert_array_equal(first, snapshot)


def test_load_reads_the_report(two_inputs: CompiledModel, tmp_path: Path) -> None:
    report = two_inputs.report()
    assert report["chosen"]["device"] in ("onnxruntime:CPU", "openvino:CPU")
    assert report["verification"]["passed"] is True


def test_partition_waves_overlap_only_independent_work_on_different_devices() -> None:
    from ai_vmm.runtime.artifact import PartitionSpec
    from ai_vmm.runtime.model import partition_waves

    def part(
        pid: str, target: str, inputs: tuple[str, ...], outputs: tuple[str, ...]
    ) -> PartitionSpec:
        return PartitionSpec(pid, target, "CPU", "e", {}, inputs, outputs)

    parts = (
        part("p0", "openvino", ("x",), ("a",)),
        part("p1", "onnxruntime", ("x",), ("b",)),  # independent of p0, other device
        part("p2", "openvino", ("x",), ("c",)),  # independent, but p0's device: next wave
        part("p3", "onnxruntime", ("a", "b"), ("y",)),
    )
    waves = [[p.id for p in wave] for wave in partition_waves(parts)]
    assert waves == [["p0", "p1"], ["p2", "p3"]]
