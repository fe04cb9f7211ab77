"""CompiledModel: input checks with clear messages, dynamic dims, thread safety."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


def _ort_executor(tmp_path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    from ai_vmm.runtime.executors import create_executor

    onnx.save(make_two_input_model(), tmp_path / "m.onnx")
    return create_executor("onnxruntime", tmp_path / "m.onnx", "CPU", {}, ("y",)), _feed(2, 5)


def test_onnxruntime_executor_calls_the_binding_and_matches_session_run(tmp_path: Path) -> None:
    import onnxruntime as ort

    executor, feed = _ort_executor(tmp_path)
    assert executor.direct_run is True
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (want,) = session.run(["y"], feed)
    got = executor.run(feed)
    assert list(got) == ["y"]
    np.testing.assert_array_equal(got["y"], want)
    # The shared RunOptions and the binding are safe under concurrent calls.
    feeds = [_feed(1 + i % 3, 2 + i % 7) for i in range(32)]
    expected = [session.run(["y"], f)[0] for f in feeds]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda f: executor.run(f)["y"], feeds))
    for want_one, have in zip(expected, results, strict=True):
        np.testing.assert_array_equal(want_one, have)


def test_onnxruntime_executor_failures_stay_input_errors(tmp_path: Path) -> None:
    executor, feed = _ort_executor(tmp_path)
    with pytest.raises(InputError, match="ONNX Runtime failed to run"):
        executor.run({"ids": feed["ids"]})  # no mask
    with pytest.raises(InputError, match="ONNX Runtime failed to run"):
        executor.run(feed | {"mask": feed["mask"].astype(np.float64)})


def test_onnxruntime_executor_without_the_binding_uses_session_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    real = ort.InferenceSession

    class PublicOnly:
        """An ``InferenceSession`` exposing only its public methods (no ``_sess``)."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            self._inner = real(*args, **kwargs)
            self.calls = 0

        def run(self, *args: object) -> object:
            self.calls += 1
            return self._inner.run(*args)

        def get_outputs(self) -> object:
            return self._inner.get_outputs()

    monkeypatch.setattr(ort, "InferenceSession", PublicOnly)
    executor, feed = _ort_executor(tmp_path)
    assert executor.direct_run is False
    assert executor.run(feed)["y"].shape == (2, 5, 4)
    assert executor._session.calls == 1


def _spinning_stop(executor: Any) -> bool:
    options = executor._session.get_session_options()
    try:
        return bool(options.get_session_config_entry("session.force_spinning_stop") == "1")
    except Exception:  # ONNX Runtime raises for a key that was never set
        return False


def test_partitions_taking_turns_on_the_cpu_stop_spinning_after_a_run() -> None:
    from ai_vmm.runtime.artifact import Manifest, PartitionSpec
    from ai_vmm.runtime.model import executor_config

    def part(pid: str, target: str, device: str) -> PartitionSpec:
        return PartitionSpec(pid, target, device, "e", {}, ("x",), ("y",), {"a": 1})

    def manifest(*parts: PartitionSpec) -> Manifest:
        return Manifest((), (), parts, {}, {}, {})

    one = part("p0", "onnxruntime", "CPU")
    assert executor_config(manifest(one), one) == {"a": 1}
    ort_cpu, ov_cpu, ort_gpu = (
        part("p0", "onnxruntime", "CPU"),
        part("p1", "openvino", "CPU"),
        part("p2", "onnxruntime", "CUDA"),
    )
    both = manifest(ort_cpu, ov_cpu)
    # A generic hint; each executor maps it (ONNX Runtime: workers stop spinning; OpenVINO's
    # threads are its own and it ignores the hint).
    assert executor_config(both, ort_cpu) == {"a": 1, "shares_cpu": True}
    assert executor_config(both, ov_cpu) == {"a": 1, "shares_cpu": True}
    alone_on_cpu = manifest(ort_cpu, ort_gpu)
    assert executor_config(alone_on_cpu, ort_cpu) == {"a": 1}
    assert executor_config(alone_on_cpu, ort_gpu) == {"a": 1}
    assert ort_cpu.config == {"a": 1}  # the manifest's config is left alone
    chosen = PartitionSpec(
        "p0", "onnxruntime", "CPU", "e", {}, ("x",), ("y",), {"force_spinning_stop": False}
    )
    shared = executor_config(manifest(chosen, ov_cpu), chosen)
    assert shared == {"force_spinning_stop": False, "shares_cpu": True}
    from ai_vmm.runtime.executors.onnxruntime import session_options

    options = session_options(shared)  # the config's own setting wins over the hint
    assert not _entry_is_one(options, "session.force_spinning_stop")
    assert _entry_is_one(session_options({"shares_cpu": True}), "session.force_spinning_stop")


def _entry_is_one(options: Any, key: str) -> bool:
    try:
        return bool(options.get_session_config_entry(key) == "1")
    except Exception:  # ONNX Runtime raises for a key that was never set
        return False


def test_loaded_split_artifact_sets_spinning_stop_and_matches(tmp_path: Path) -> None:
    from ai_vmm.runtime.executors import create_executor
    from ai_vmm.runtime.executors.onnxruntime import session_options

    assert (
        session_options({"force_spinning_stop": True}).get_session_config_entry(
            "session.force_spinning_stop"
        )
        == "1"
    )
    onnx.save(make_two_input_model(), tmp_path / "m.onnx")
    alone = create_executor("onnxruntime", tmp_path / "m.onnx", "CPU", {}, ("y",))
    assert not _spinning_stop(alone)
    stopping = create_executor(
        "onnxruntime", tmp_path / "m.onnx", "CPU", {"force_spinning_stop": True}, ("y",)
    )
    assert _spinning_stop(stopping)
    feed = _feed(3, 4)
    np.testing.assert_array_equal(stopping.run(feed)["y"], alone.run(feed)["y"])


def test_onnxruntime_int64_outputs_feed_an_openvino_partition(tmp_path: Path) -> None:
    """ONNX Runtime returns int64 tensors as numpy ``longlong`` (char 'q'); OpenVINO 2026.4's
    Python binding refuses that dtype ("Unsupported data type: int64"), so an int64 value
    crossing an onnxruntime -> openvino partition boundary failed the run (seen in a pipelined
    transformer plan, where a Shape result went from ONNX Runtime to OpenVINO)."""
    from onnx import TensorProto, helper

    from ai_vmm.runtime.executors import create_executor

    shape = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"])],
        "shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3])],
        [helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
    )
    scale = helper.make_graph(
        [helper.make_node("Mul", ["s", "s"], ["y"])],
        "square",
        [helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])],
    )
    for graph, name in ((shape, "a.onnx"), (scale, "b.onnx")):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        onnx.save(model, tmp_path / name)
    first = create_executor("onnxruntime", tmp_path / "a.onnx", "CPU", {}, ("s",))
    second = create_executor("openvino", tmp_path / "b.onnx", "CPU", {}, ("y",))
    handed = first.run({"x": np.zeros((5, 3), np.float32)})["s"]
    assert handed.dtype == np.int64
    np.testing.assert_array_equal(second.run({"s": handed})["y"], [25, 9])
    as_longlong = np.array([4, 2], dtype=np.longlong)
    np.testing.assert_array_equal(second.run({"s": as_longlong})["y"], [16, 4])
