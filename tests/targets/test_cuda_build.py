"""Building cuda payloads on the CPU: the torch route and its fallback to the ONNX route, the
ranges the executor enforces, reuse within the process, and the estimate before building.

Packages are built as eager ``torch.export`` programs here (``float_baseline``) where the test
is about what happens before Inductor: the route, the export, the recorded shapes. The cuda
target's CPU mode exists for tests (``torch_device: cpu``); the same code builds GPU packages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from cuda_models import two_inputs  # noqa: E402
from onnx_op_cases import running_sum_loop  # noqa: E402

from ai_vmm.frontends.torch import export_torch  # noqa: E402
from ai_vmm.runtime.devices import Device  # noqa: E402
from ai_vmm.runtime.errors import CompileError, InputError  # noqa: E402
from ai_vmm.runtime.executors import create_executor  # noqa: E402
from ai_vmm.targets import cuda_build, cuda_estimate  # noqa: E402
from ai_vmm.targets.base import TargetOptions, axis_symbol  # noqa: E402
from ai_vmm.targets.cuda import CudaTarget, spec_figures  # noqa: E402

CPU = Device("cuda", "cpu", "cpu", "CPU package (test)", {"torch_device": "cpu"})


class TwoLayer(torch.nn.Module):
    """conv -> relu -> linear over [N, 3, 8, 8]: small enough to export in a second."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 64, 5)

    def forward(self, x: Any) -> Any:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _frontend(module: Any, dynamic: Any) -> tuple[ir.Model, Any]:
    """What the torch frontend hands the compiler: the ONNX model and the torch program."""
    x = torch.randn(2, 3, 8, 8)
    proto, _, program = export_torch(
        module, "torch.module", example_inputs=(x,), dynamic_shapes={"x": {0: dynamic}}
    )
    return ir.serde.deserialize_model(proto), program


def _options(model: ir.Model, program: Any, **extra: Any) -> TargetOptions:
    io = ([v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs])
    return TargetOptions(
        extra={
            "input_bounds": {},
            "sample_dims": {},
            "torch_program": program,
            "torch_program_io": io,
            **extra,
        }
    )


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


def _run(payload_dir: Path, config: dict[str, Any], model: ir.Model, x: np.ndarray) -> Any:
    outputs = tuple(v.name or "" for v in model.graph.outputs)
    executor = create_executor("cuda", payload_dir / config["entry"], "cpu", config, outputs)
    return executor.run({model.graph.inputs[0].name or "": x})[outputs[0]]


def test_torch_route_builds_the_frontends_program(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = TwoLayer().eval()
    model, program = _frontend(module, "batch")
    payload = CudaTarget().float_baseline(model, CPU, _options(model, program), tmp_path)
    config = payload.config
    assert config["source"] == "torch" and "source_note" not in config
    assert config["runner"] == "eager" and payload.entry == "program.pt2"
    spec = config["inputs"][0]
    assert spec["shape"] == [None, 3, 8, 8] and spec["ranges"] == {"0": [1, 4096]}
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    got = _run(tmp_path, {**config, "entry": payload.entry}, model, x)
    with torch.no_grad():
        np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_a_copied_program_whose_input_shadows_a_builtin_still_verifies() -> None:
    """nn.Sequential's input is named ``input``: ``copy.deepcopy`` renames its placeholder and
    left the signature behind, so moving the copy to the GPU failed torch's verifier and the
    torch route fell back to ONNX (H100, 2026-12-06). The pass below verifies like that one."""
    from torch.export.passes import move_to_device_pass

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU()).eval()
    x = torch.randn(2, 6)
    program = torch.export.export(module, (x,))
    moved = move_to_device_pass(cuda_build.copy_program(program), "cpu")
    with torch.no_grad():
        torch.testing.assert_close(moved.module()(x), module(x))
    assert [s.arg.name for s in program.graph_signature.input_specs][-1] == "input"


def test_torch_route_falls_back_to_onnx_when_its_export_narrows_an_axis(tmp_path: Path) -> None:
    """A program exported with batch <= 64 cannot give the package the ONNX graph asks for
    (batch up to 4096): the ONNX route builds it, and the payload says why; a forced torch
    route fails with that reason; the torch route is not tried again at another precision."""
    torch.manual_seed(0)
    module = TwoLayer().eval()
    model, program = _frontend(module, torch.export.Dim("batch", min=1, max=64))
    options = _options(model, program)
    payload = CudaTarget().float_baseline(model, CPU, options, _dir(tmp_path / "a"))
    config = payload.config
    assert config["source"] == "onnx", config
    assert "the ONNX graph was compiled instead" in config["source_note"]
    assert "narrows dynamic axes (x axis 0)" in config["source_note"]
    assert program in cuda_build._FAILED
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString())
    x = np.random.default_rng(1).standard_normal((70, 3, 8, 8)).astype(np.float32)
    got = _run(tmp_path / "a", {**config, "entry": payload.entry}, model, x)
    np.testing.assert_allclose(got, session.run(None, {"x": x})[0], atol=1e-5)
    with pytest.raises(CompileError, match="did not give a package"):
        cuda_build.build_package(
            model,
            CPU,
            _options(model, program, cuda_source="torch"),
            _dir(tmp_path / "b"),
            "fp32",
            eager=True,
        )


def test_dynamic_ranges_are_recorded_and_enforced(tmp_path: Path) -> None:
    """``--input`` bounds become the export's ranges; the executor refuses sizes outside them
    (AOTInductor would run its kernels there unchecked), axes that must agree but do not, and
    element types of another kind; it casts within a kind (int32 ids for an int64 input)."""
    path = two_inputs(tmp_path / "two.onnx")
    model = ir.load(path)
    options = TargetOptions(extra={"input_bounds": {"x": [[1, 4], [2, 64]]}, "sample_dims": {}})
    payload = CudaTarget().float_baseline(model, CPU, options, _dir(tmp_path / "p"))
    specs = {s["name"]: s for s in payload.config["inputs"]}
    assert specs["x"]["ranges"] == {"0": [1, 4], "1": [2, 64]}
    assert specs["ids"]["symbols"] == specs["x"]["symbols"] and specs["ids"]["dtype"] == "int64"
    executor = create_executor(
        "cuda", tmp_path / "p" / payload.entry, "cpu", payload.config, ("y",)
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    ids = rng.integers(0, 100, (2, 8))
    want = ort.InferenceSession(str(path)).run(None, {"x": x, "ids": ids})[0]
    np.testing.assert_allclose(executor.run({"x": x, "ids": ids.astype(np.int32)})["y"], want)
    with pytest.raises(InputError, match=r"axis 0 is 5, outside the range 1\.\.4"):
        executor.run({"x": np.ones((5, 8), np.float32), "ids": np.ones((5, 8), np.int64)})
    with pytest.raises(InputError, match="on the same dimension"):
        executor.run({"x": x, "ids": np.ones((2, 9), np.int64)})
    with pytest.raises(InputError, match="element type float32, the model takes int64"):
        executor.run({"x": x, "ids": x})
    with pytest.raises(InputError, match="missing input 'ids'"):
        executor.run({"x": x})


def test_an_unbounded_axis_reaches_the_largest_size_the_samples_show(tmp_path: Path) -> None:
    """Without a user bound an axis ranges to 4,096, or to the largest sample where that is
    larger: openWakeWord's mel-spectrogram takes 32,000 audio samples, and its package was
    refused on its own sample (H100, 2026-12-06)."""
    path = two_inputs(tmp_path / "two.onnx")
    model = ir.load(path)
    symbol = axis_symbol(model.graph.inputs[0], 1, model.graph.inputs[0].shape[1])
    options = TargetOptions(extra={"sample_dims": {}, "sample_sizes": {symbol: [8, 5000]}})
    payload = CudaTarget().float_baseline(model, CPU, options, _dir(tmp_path / "p"))
    specs = {s["name"]: s for s in payload.config["inputs"]}
    assert specs["x"]["ranges"]["1"][1] == 5000 and specs["x"]["ranges"]["0"][1] == 4096
    executor = create_executor(
        "cuda", tmp_path / "p" / payload.entry, "cpu", payload.config, ("y",)
    )
    x = np.ones((1, 5000), np.float32)
    ids = np.ones((1, 5000), np.int64)
    want = ort.InferenceSession(str(path)).run(None, {"x": x, "ids": ids})[0]
    np.testing.assert_allclose(executor.run({"x": x, "ids": ids})["y"], want)


def test_a_capped_axis_keeps_size_one_in_range(
    zoo_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """The zoo encoder's position table caps its sequence at 128, so the named export fails;
    export's hints find the cap but raise every lower bound to 2 (0/1 specialization). The
    named export is retried with the cap: batch 1 and one token stay in range (on the H200 the
    executor refused batch 1 and the compile failed its verification)."""
    path = zoo_model("transformer_encoder")
    model = ir.load(path)
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {}})
    payload = CudaTarget().float_baseline(model, CPU, options, _dir(tmp_path / "p"))
    ranges = {s["name"]: s["ranges"] for s in payload.config["inputs"]}
    assert ranges["input_ids"] == {"0": [1, 4096], "1": [1, 128]}
    assert "ranges the model allows" in payload.config["shape_note"]
    executor = create_executor(
        "cuda",
        tmp_path / "p" / payload.entry,
        "cpu",
        payload.config,
        ("last_hidden_state", "pooler_output"),
    )
    session = ort.InferenceSession(str(path))
    for batch, seq in ((1, 1), (1, 7), (3, 128)):
        feeds = {
            "input_ids": np.random.default_rng(seq).integers(0, 100, (batch, seq)),
            "attention_mask": np.ones((batch, seq), np.int64),
        }
        want = session.run(None, feeds)[0]
        got = executor.run(feeds)["last_hidden_state"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match=r"axis 1 is 129, outside the range 1\.\.128"):
        executor.run(
            {
                "input_ids": np.ones((1, 129), np.int64),
                "attention_mask": np.ones((1, 129), np.int64),
            }
        )


class Branchy(torch.nn.Module):
    """Computes differently at batch 1: export traces at batch 2 and takes size 1 obliviously
    (torch 2.13 exports this with the range 1..N and the x + x branch for every size)."""

    arg_names = ("x", "ids")

    def forward(self, x: Any, ids: Any) -> Any:
        return ((x * 3 if x.shape[0] == 1 else x + x) + ids.float(),)


def test_sizes_where_the_export_differs_from_the_model_are_refused(tmp_path: Path) -> None:
    model = ir.load(two_inputs(tmp_path / "two.onnx"))
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {}})
    payload = cuda_build._build(
        Branchy(), "onnx", model, options, _dir(tmp_path / "p"), "fp32", True, "cpu"
    )
    specs = {s["name"]: s for s in payload.config["inputs"]}
    assert specs["x"]["ranges"]["0"] == [2, 4096] and specs["x"]["ranges"]["1"][0] == 1
    assert "differs from the model at x axis 0 below 2" in payload.config["shape_note"]
    executor = create_executor(
        "cuda", tmp_path / "p" / payload.entry, "cpu", payload.config, ("y",)
    )
    x, ids = np.ones((3, 5), np.float32), np.ones((3, 5), np.int64)
    np.testing.assert_allclose(executor.run({"x": x, "ids": ids})["y"], x + x + 1)
    with pytest.raises(
        InputError, match=r"axis 0 is 1, outside the range 2\.\.4096.*export said.*differs"
    ):
        executor.run({"x": x[:1], "ids": ids[:1]})


@pytest.mark.parametrize(("sizes", "least"), [([3, 8], 3), ([8], 2), ([5, 8], 2)])
def test_a_raised_lower_bound_stops_at_the_least_size_that_agrees(
    tmp_path: Path, sizes: list[int], least: int
) -> None:
    """The export (traced at the first sample's batch 8) differs from the model at batch 1
    only: the range starts at the least sample size that agrees (3), or, halving from there
    while the two agree, lower (8 -> 4 -> 2; 5 -> 2), never at 1. A PP-OCR detector's second
    sample failed its own compile on the H200 when the bound jumped to the first sample's."""
    model = ir.load(two_inputs(tmp_path / "two.onnx"))
    options = TargetOptions(
        extra={"input_bounds": {}, "sample_dims": {"batch": 8}, "sample_sizes": {"batch": sizes}}
    )
    payload = cuda_build._build(
        Branchy(), "onnx", model, options, _dir(tmp_path / "p"), "fp32", True, "cpu"
    )
    specs = {s["name"]: s for s in payload.config["inputs"]}
    assert specs["x"]["ranges"]["0"] == [least, 4096]
    assert f"differs from the model at x axis 0 below {least}" in payload.config["shape_note"]


def test_a_second_identical_request_reuses_the_package(
    zoo_model: Callable[[str], Path], tmp_path: Path
) -> None:
    model = ir.load(zoo_model("small_cnn"))
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {}})
    first = CudaTarget().float_baseline(model, CPU, options, _dir(tmp_path / "a"))
    hits = cuda_build._CACHE.hits
    again = CudaTarget().float_baseline(model, CPU, options, _dir(tmp_path / "b"))
    assert cuda_build._CACHE.hits == hits + 1 and again.config.get("reused") is True
    assert (tmp_path / "b" / again.entry).read_bytes() == (
        tmp_path / "a" / first.entry
    ).read_bytes()
    other = TargetOptions(extra={"input_bounds": {"pixel_values": [[1, 8]]}, "sample_dims": {}})
    third = CudaTarget().float_baseline(model, CPU, other, _dir(tmp_path / "c"))
    assert "reused" not in third.config


def test_estimate_before_building(zoo_model: Callable[[str], Path]) -> None:
    """The estimate grows with the batch, counts the heavy kernels, prices the host copies,
    and halves the bytes at fp16; it needs no GPU (datasheet figures of an H100 here)."""
    figures = spec_figures("NVIDIA H100 80GB HBM3")
    assert figures is not None
    figures = {**figures, "link_gbps": 9.0}
    h100 = Device("cuda", "0", "gpu", "NVIDIA H100 80GB HBM3", {})
    model = ir.load(zoo_model("small_cnn"))
    target = CudaTarget()
    one, many = target.estimate_shapes(model, h100, [{"batch": 1}, {"batch": 64}], figures=figures)
    assert one["kernels"] >= 5 and one["gflop"] > 0
    assert many["gpu_ms"] > one["gpu_ms"] and many["transfer_ms"] > 30 * one["transfer_ms"]
    assert many["gflop"] == pytest.approx(64 * one["gflop"], rel=0.01)
    fp16 = target.estimate_shapes(
        model, h100, [{"batch": 64}], precision="fp16", figures=figures, host_io=False
    )[0]
    assert fp16["mb"] < 0.6 * many["mb"] and fp16["transfer_ms"] == 0.0
    seconds = target.estimate(model, h100, {"batch": 64}, figures=figures)
    assert seconds == pytest.approx(many["ms"] / 1000.0)
    assert fp16["ms"] < many["ms"]


def test_estimate_prices_a_recurrent_layer_per_time_step(
    zoo_model: Callable[[str], Path],
) -> None:
    """A converted LSTM is a loop over time (a scan): its kernels grow with the length, and a
    long sequence costs at least a kernel floor per step, however few its FLOPs."""
    figures = spec_figures("NVIDIA H100 80GB HBM3")
    assert figures is not None
    h100 = Device("cuda", "0", "gpu", "NVIDIA H100 80GB HBM3", {})
    model = ir.load(zoo_model("lstm"))  # 2 layers, hidden 32, over [N, T, 16]
    short, long = CudaTarget().estimate_shapes(
        model, h100, [{"batch": 1, "seq": 10}, {"batch": 1, "seq": 1000}], figures=figures
    )
    # 2 layers x (1 projection + 2 kernels per step): the long one has 2 x 2 x 990 more.
    assert long["kernels"] - short["kernels"] == 2 * 2 * 990
    assert long["gpu_ms"] >= 2 * 2 * 1000 * cuda_estimate.KERNEL_FLOOR_US / 1000


def test_estimate_prices_a_counted_loop_per_step() -> None:
    """A counted Loop (a scan) launches its body's kernels every step: here a Gather and a
    MatMul per step of x's first axis."""
    figures = spec_figures("NVIDIA H100 80GB HBM3")
    assert figures is not None
    h100 = Device("cuda", "0", "gpu", "NVIDIA H100 80GB HBM3", {})
    model = ir.serde.deserialize_model(running_sum_loop())
    short, long = CudaTarget().estimate_shapes(
        model, h100, [{"T": 10, "N": 2}, {"T": 1000, "N": 2}], figures=figures
    )
    assert long["kernels"] - short["kernels"] == 2 * 990
    assert long["gpu_ms"] >= 2 * 1000 * cuda_estimate.KERNEL_FLOOR_US / 1000


def _batch_dynamic_program(module: Any, example: Any) -> Any:
    batch = torch.export.Dim("batch", min=1, max=64)
    return torch.export.export(
        module.eval(), (example,), dynamic_shapes=({0: batch},), strict=False
    )


def test_channels_last_follows_inductors_static_heuristic_for_a_dynamic_batch() -> None:
    nn = torch.nn
    cnn = nn.Sequential(
        nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1)
    )
    grouped = nn.Sequential(
        nn.Conv2d(3, 128, 3, padding=1), nn.Conv2d(128, 128, 3, padding=1, groups=2)
    )
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8))
    x = torch.randn(2, 3, 16, 16)
    gpu = "cuda:0"  # only the device string is read: no GPU needed to decide
    settings = {
        name: cuda_build.inductor_settings(
            torch, _batch_dynamic_program(module, x), gpu, TargetOptions()
        )
        for name, module in (("cnn", cnn), ("grouped", grouped), ("mlp", mlp))
    }
    assert settings["cnn"].get("force_layout_optimization") is True
    # A grouped convolution with more than one input channel per group: slower channels-last.
    assert "force_layout_optimization" not in settings["grouped"]
    assert "force_layout_optimization" not in settings["mlp"]
    # The user's word wins either way (only where there are 2-D convolutions at all).
    forced = TargetOptions(extra={"cuda_channels_last": True})
    program = _batch_dynamic_program(grouped, x)
    assert cuda_build.inductor_settings(torch, program, gpu, forced)["force_layout_optimization"]
    off = TargetOptions(extra={"cuda_channels_last": False})
    program = _batch_dynamic_program(cnn, x)
    assert "force_layout_optimization" not in cuda_build.inductor_settings(torch, program, gpu, off)
    # A CPU (test) package gets Inductor's defaults.
    assert cuda_build.inductor_settings(torch, program, "cpu", forced) == {}


@pytest.mark.parametrize("strided", [False, True])
def test_a_recurrent_graph_compiles_and_keeps_its_length_dynamic(
    tmp_path: Path, strided: bool
) -> None:
    """LSTM -> Squeeze -> Relu (Silero VAD's shape): the converter's scan feeds a fused
    kernel. PyTorch 2.11-2.13 Inductor then computed that kernel in place into the loop's
    buffer and declared it twice in the C++ wrapper; ``inductor_settings`` turns in-place
    buffers off for programs with loops. The package runs at lengths and batches other than the
    example's (a dynamic batch failed inside Inductor's scan lowering, `KeyError` on the batch
    symbol, until the step's output named its sizes: ``cuda_ops_rnn._sized``).

    ``strided``: every other time step into a bidirectional LSTM, so the length is
    ``(S + 1) // 2``, an expression of the input's size (ddddocr's length comes from the image
    width that way): stacked, its outputs failed the lowering with ``KeyError`` on ``S``; they
    are written into a carried buffer instead (``cuda_ops_rnn.scan_into_buffers``)."""
    import onnx.helper as oh
    import onnxruntime as ort
    from onnx_op_cases import const, vi
    from onnx_op_cases import model as onnx_model

    hidden, features = 16, 8
    dirs = 2 if strided else 1
    rng = np.random.default_rng(2)
    head = [oh.make_node("Transpose", ["x"], ["xt"], perm=[2, 0, 1])]
    if strided:
        head.append(oh.make_node("Slice", ["xt", "zero", "big", "zero", "two"], ["xs"]))
    lstm = oh.make_node(
        "LSTM",
        ["xs" if strided else "xt", "W", "R", "B"],
        ["y", "hn"],
        hidden_size=hidden,
        direction="bidirectional" if strided else "forward",
    )
    tail = (
        [oh.make_node("Relu", ["y"], ["out"])]
        if strided
        else [oh.make_node("Squeeze", ["y", "one"], ["ys"]), oh.make_node("Relu", ["ys"], ["out"])]
    )
    inits = [
        const("W", rng.standard_normal((dirs, 4 * hidden, features)), np.float32),
        const("R", rng.standard_normal((dirs, 4 * hidden, hidden)), np.float32),
        const("B", rng.standard_normal((dirs, 8 * hidden)), np.float32),
        const("one", [1]),
        const("zero", [0]),
        const("two", [2]),
        const("big", [1 << 30]),
    ]
    proto = onnx_model(
        [*head, lstm, *tail],
        [vi("x", ["B", features, "S"])],
        [vi("out", None), vi("hn", None)],
        inits,
        opset=16,
    )
    model = ir.serde.deserialize_model(proto)
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {"S": 7, "B": 2}})
    payload = cuda_build.build_package(model, CPU, options, _dir(tmp_path / "p"), "fp32")
    assert payload.config["inductor"].get("inplace_buffers") is False, payload.config
    executor = create_executor(
        "cuda", tmp_path / "p" / payload.entry, "cpu", payload.config, ("out", "hn")
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    # Strided, the export guards S >= 3 and its hinted fallback starts the batch at 2 (the
    # outputs are sequence-first, so no batch padding): those sizes are what the package takes.
    for batch, length in ((2, 5), (3, 23), (2, 8)) if strided else ((1, 5), (3, 23), (2, 8)):
        x = rng.standard_normal((batch, features, length)).astype(np.float32)
        got = executor.run({"x": x})
        for name, want in zip(("out", "hn"), session.run(None, {"x": x}), strict=True):
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("batch", "tf_condition", "stride"),
    [(3, False, 1), ("N", False, 1), ("N", True, 1), ("N", False, 2)],
)
def test_a_counted_loop_compiles_and_keeps_its_trip_count_dynamic(
    tmp_path: Path, batch: int | str, tf_condition: bool, stride: int
) -> None:
    """A counted Loop (the converter's scan) as an AOTInductor package, run at trip counts (and,
    with a dynamic batch, batches) other than the example's against ONNX Runtime. Its body
    adds an outer constant to the counter: made inside the body, that constant broke
    Inductor's scan lowering ("FunctionalTensor on its own"), so the converter makes such
    constants before the loop. With a dynamic batch the stacked outputs' per-step size names
    the batch, which Inductor's lowering could not resolve (``KeyError``) until the body was
    made to reshape to the outer graph's sizes. ``tf_condition``: the body reads the outer
    trip count as data (TF's ``while``, chars2vec); made into a tensor before the loop, that
    symbolic scalar gave a package that segfaulted on its first call, so it is made in the body
    from the lifted size instead (the child-process first call would refuse a crash).
    ``stride`` 2: the trip count is ``(T - 1) // 2 + 1``, an expression Inductor's scan
    lowering cannot size stacked outputs by (``KeyError``); they go into carried buffers."""
    proto = running_sum_loop(batch=batch, tf_condition=tf_condition, stride=stride)
    model = ir.serde.deserialize_model(proto)
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {"T": 5, "N": 3}})
    payload = cuda_build.build_package(model, CPU, options, _dir(tmp_path / "p"), "fp32")
    assert "child run" in payload.config["build_stages_s"]  # a program with a loop
    executor = create_executor(
        "cuda", tmp_path / "p" / payload.entry, "cpu", payload.config, ("final", "states")
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    # Strided, the export guards T >= 3 (two steps at least) and its hinted fallback starts
    # the batch at 2, as the strided RNN's above: those sizes are what the package takes.
    for length, rows in (
        (1 if stride == 1 else 3, 3),
        (9, 3),
        (4, (1 if stride == 1 else 2) if batch == "N" else 3),
        (6, 2 if batch == "N" else 3),
    ):
        feeds = {
            "x": rng.standard_normal((length, rows, 4)).astype(np.float32),
            "state0": rng.standard_normal((rows, 4)).astype(np.float32),
        }
        got = executor.run(feeds)
        for name, want in zip(("final", "states"), session.run(None, feeds), strict=True):
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5)


def test_inductor_settings_follow_the_targets_knobs() -> None:
    """The opt-in Inductor settings land in the package's settings (GPU packages only)."""
    program = torch.export.export(TwoLayer().eval(), (torch.randn(2, 3, 8, 8),))
    knobs = {"cuda_freezing": True, "cuda_coordinate_descent": True, "cuda_wrapper_opt": "O0"}
    options = TargetOptions(extra={**knobs, "cuda_channels_last": False})
    settings = cuda_build.inductor_settings(torch, program, "cuda:0", options)
    assert settings["freezing"] is True and settings["coordinate_descent_tuning"] is True
    assert settings["aot_inductor.compile_wrapper_opt_level"] == "O0"
    assert "force_layout_optimization" not in settings
    forced = TargetOptions(extra={"cuda_channels_last": True})
    assert cuda_build.inductor_settings(torch, program, "cuda:0", forced) == {
        "force_layout_optimization": True
    }
    assert cuda_build.inductor_settings(torch, program, "cpu", options) == {}  # CPU test mode
