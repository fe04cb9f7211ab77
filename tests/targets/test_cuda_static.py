"""Static-batch packages beside the dynamic one (``targets/cuda_static.py``): which batches get
one, the tuning variant that offers them to the compile's timing, and on the CPU (the cuda
target's test mode) a payload whose static package runs the calls of its batch once
``static_dispatch`` is on, while every other batch runs on the dynamic package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

from ai_vmm.frontends.torch import export_torch  # noqa: E402
from ai_vmm.runtime.devices import Device  # noqa: E402
from ai_vmm.runtime.executors import create_executor  # noqa: E402
from ai_vmm.targets import cuda_static  # noqa: E402
from ai_vmm.targets.base import TargetOptions  # noqa: E402
from ai_vmm.targets.cuda import CudaTarget  # noqa: E402

CPU = Device("cuda", "cpu", "cpu", "CPU package (test)", {"torch_device": "cpu"})


def test_static_batches_come_from_the_samples_large_batches_within_the_range() -> None:
    dims = {"batch": (1, 64), "seq": (1, 512)}

    def chosen(**extra: Any) -> list[int]:
        return cuda_static.wanted_batches(TargetOptions(extra=extra), "batch", dims)

    assert chosen(sample_sizes={"batch": [1, 4]}) == []  # below STATIC_MIN_BATCH: none
    assert chosen(sample_sizes={"batch": [1, 8, 16, 32]}) == [16, 32]  # the MAX_STATIC largest
    assert chosen(sample_sizes={"batch": [128]}) == []  # outside the export's range
    assert chosen(sample_sizes={"batch": [32]}, cuda_static_batches=[]) == []
    assert chosen(sample_sizes={"batch": [32]}, cuda_static_batches=[2, 4]) == [2, 4]
    assert cuda_static.wanted_batches(TargetOptions(extra={}), None, dims) == []


def test_sample_batches_the_padding_covers_get_static_packages_too() -> None:
    dims = {"batch": (1, 64)}
    pad = {"from": 1, "to": 2, "inputs": {"x": 0}, "outputs": {"y": 0}}

    def chosen(padded: Any = pad, **extra: Any) -> list[int]:
        return cuda_static.wanted_batches(TargetOptions(extra=extra), "batch", dims, padded)

    assert chosen(sample_sizes={"batch": [1, 4]}) == [1]  # 4 is in the export's range
    assert chosen(sample_sizes={"batch": [1, 8, 16, 32]}) == [1, 16, 32]  # beside the large
    assert chosen(None, sample_sizes={"batch": [1, 4]}) == []  # no padding: as before
    state_axis = {**pad, "inputs": {"x": 0, "state": 1}}  # the static export resizes axis 0
    assert chosen(state_axis, sample_sizes={"batch": [1, 4]}) == []
    assert chosen(sample_sizes={"batch": [1]}, cuda_static_batches=[]) == []  # asked: none


def test_the_static_variant_is_timed_only_where_a_payload_has_static_packages() -> None:
    target = CudaTarget()
    plain = target.tuning_space(CPU, {"cuda_graphs": True})
    assert {"static_dispatch": True} not in plain and {"cuda_graphs": False} in plain
    static = {"cuda_graphs": True, "static_batches": {"32": {"entry": "model-b32.pt2"}}}
    assert {"static_dispatch": True} in target.tuning_space(CPU, static)


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 8)

    def forward(self, x: Any) -> Any:
        return torch.relu(self.fc(x)).softmax(-1)


def _small(**extra: Any) -> tuple[Any, ir.Model, tuple[list[str], list[str]], TargetOptions]:
    """The small module through the torch frontend, with the target options ``extra`` adds."""
    module = Small().eval()
    proto, _, program = export_torch(
        module,
        "torch.module",
        example_inputs=(torch.randn(2, 16),),
        dynamic_shapes={"x": {0: "batch"}},
    )
    model = ir.serde.deserialize_model(proto)
    io = ([v.name or "" for v in model.graph.inputs], [v.name or "" for v in model.graph.outputs])
    options = TargetOptions(
        extra={
            "input_bounds": {},
            "sample_dims": {},
            "torch_program": program,
            "torch_program_io": io,
            **extra,
        }
    )
    return module, model, io, options


@pytest.mark.slow
def test_a_static_package_runs_its_batch_where_dispatch_is_on(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, model, io, options = _small(sample_sizes={"batch": [1, 4]}, cuda_static_batches=[4])
    payload = CudaTarget().codegen(model, CPU, options, tmp_path)
    config = payload.config
    static = config["static_batches"]["4"]
    assert static["entry"] in payload.files and (tmp_path / static["entry"]).is_file()
    assert static["inputs"][0]["shape"] == [4, 16]
    assert "batch 4: built" in config["static_note"] and "static_dispatch" not in config
    outputs = tuple(io[1])
    rng = np.random.default_rng(0)
    for dispatch, want_calls in ((False, {}), (True, {4: 2})):
        executor = create_executor(
            "cuda",
            tmp_path / payload.entry,
            "cpu",
            {**config, "static_dispatch": dispatch},
            outputs,
        )
        for batch in (4, 3, 4, 5):
            x = rng.standard_normal((batch, 16)).astype(np.float32)
            got = executor.run({io[0][0]: x})[outputs[0]]
            with torch.no_grad():
                want = module(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # Off: every call on the dynamic package; on: batch 4 on its own, 3 and 5 dynamic.
        assert executor.static_calls == want_calls  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_static_package_that_does_not_build_leaves_the_dynamic_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, model, _, options = _small(cuda_static_batches=[8])

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("export refused")

    monkeypatch.setattr(cuda_static, "export", fails)
    payload = CudaTarget().codegen(model, CPU, options, tmp_path)
    assert "static_batches" not in payload.config
    assert "batch 8: not built (export refused)" in payload.config["static_note"]
    assert not list(tmp_path.glob("*-b8.pt2"))
    assert payload.config["inputs"][0]["ranges"]["0"] == [1, 4096]  # the dynamic package
