"""The cuda target: AOTInductor packages, their executor, plans for an absent GPU, and (marked
``gpu``, skipped without one) parity and heterogeneous plans on a real NVIDIA GPU."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import ai_vmm  # noqa: E402
from ai_vmm.runtime.devices import Device  # noqa: E402
from ai_vmm.runtime.errors import DeviceError, InputError  # noqa: E402
from ai_vmm.runtime.executors import create_executor  # noqa: E402
from ai_vmm.targets.base import TargetOptions  # noqa: E402
from ai_vmm.targets.cuda import CudaTarget, spec_figures  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from convformer import convformer  # noqa: E402
from hetero_model import make_depth_to_space_model  # noqa: E402

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")


def test_discovery_without_a_gpu_gives_a_reason() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from ai_vmm import hardware

    devices, _, note = CudaTarget().discover(hardware.detect_cpu())
    assert devices == []
    assert note and ("NVIDIA driver" in note or "CUDA" in note)


def test_spec_figures_by_gpu_name() -> None:
    h100 = spec_figures("NVIDIA H100 80GB HBM3")
    assert h100 is not None and h100["peak_gflops"]["fp16"] == 989000.0
    assert spec_figures("NVIDIA H200")["bandwidth_gbps"] == 4800.0  # type: ignore[index]
    assert spec_figures("Some Other Accelerator") is None


def test_cpu_package_runs_with_dynamic_batch_and_checks_fixed_axes(
    zoo_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """The whole codegen path (convert, export, AOTInductor, executor) on the CPU: an
    AOTInductor package for the CPU is built the same way as for the GPU."""
    path = zoo_model("small_cnn")
    model = ir.load(path)
    device = Device("cuda", "cpu", "cpu", "CPU package (test)", {"torch_device": "cpu"})
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {"batch": 1}})
    payload = CudaTarget().codegen(model, device, options, tmp_path)
    assert payload.entry == "model.pt2" and (tmp_path / "model.pt2").is_file()
    assert payload.config["inputs"][0]["shape"] == [None, 3, 32, 32]
    assert payload.config["source"] == "onnx"
    outputs = tuple(v.name or "" for v in model.graph.outputs)
    executor = create_executor("cuda", tmp_path / payload.entry, "cpu", payload.config, outputs)
    session = ort.InferenceSession(str(path))
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        got = executor.run({"pixel_values": x})["logits"]
        np.testing.assert_allclose(got, session.run(None, {"pixel_values": x})[0], atol=1e-5)
    with pytest.raises(InputError, match=r"compiled for \('\?', 3, 32, 32\)"):
        executor.run({"pixel_values": np.zeros((1, 3, 16, 16), np.float32)})
    # Outputs that only another partition on the same device reads stay torch tensors there,
    # and a torch tensor is taken as an input as it is.
    keep = create_executor(
        "cuda",
        tmp_path / payload.entry,
        "cpu",
        {**payload.config, "device_outputs": ["logits"]},
        outputs,
    )
    x = torch.randn(2, 3, 32, 32)
    kept = keep.run({"pixel_values": x})["logits"]
    assert isinstance(kept, torch.Tensor)
    np.testing.assert_allclose(
        kept.numpy(), executor.run({"pixel_values": x.numpy()})["logits"], atol=1e-6
    )


def test_a_model_inductor_refuses_runs_as_its_exported_program(
    zoo_model: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where AOTInductor fails on a model that exported and checked (two LSTMs on the GPU
    machine's torch 2.11), the build keeps the exported program, run eagerly, and says why."""
    from ai_vmm.targets import cuda_build

    def refuse(*args: object, **kwargs: object) -> object:
        raise RuntimeError("InductorError: AssertionError:")

    monkeypatch.setattr(cuda_build, "package_program", refuse)
    monkeypatch.setattr(cuda_build, "_CACHE", cuda_build._PackageCache(cuda_build.CACHE_SIZE))
    path = zoo_model("small_cnn")
    model = ir.load(path)
    device = Device("cuda", "cpu", "cpu", "CPU package (test)", {"torch_device": "cpu"})
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {"batch": 1}})
    payload = CudaTarget().codegen(model, device, options, tmp_path)
    assert payload.entry == "program.pt2" and payload.config["runner"] == "eager"
    assert "InductorError" in payload.config["inductor_note"]
    assert not (tmp_path / "model.pt2").exists()
    outputs = tuple(v.name or "" for v in model.graph.outputs)
    executor = create_executor("cuda", tmp_path / payload.entry, "cpu", payload.config, outputs)
    x = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"pixel_values": x})[0]
    np.testing.assert_allclose(executor.run({"pixel_values": x})["logits"], expected, atol=1e-5)


def test_plan_for_an_absent_gpu_defers_its_partitions(
    zoo_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """A fleet build for the Xeon + H100 profile plans the GPU; the AOTInductor package can only
    be built there, so the artifact says so and the runtime refuses it with that reason."""
    result = ai_vmm.compile(zoo_model("resnet"), "auto", tmp_path / "r.vmm", hardware="xeon-nvidia")
    parts = result.manifest["partitions"]
    assert [p["target"] for p in parts] == ["cuda"]
    assert "can only be built on a machine with cuda:0" in parts[0]["config"]["deferred"]
    with pytest.raises(DeviceError, match="was not built: cuda payloads can only be built"):
        ai_vmm.runtime.load(tmp_path / "r.vmm")


# --------------------------------------------------------------------------------------------
# On a GPU
# --------------------------------------------------------------------------------------------

# fp32 on the GPU is IEEE fp32 (TF32 off); fp16 carries ~3 decimal digits through the network.
FP32_TOL = {"rtol": 1e-3, "atol": 1e-4}
FP16_TOL = {"rtol": 2e-2, "atol": 2e-2}


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", ["resnet", "transformer_encoder", "llama"])
def test_gpu_parity_on_zoo_models(
    name: str, precision: str, zoo: ModuleType, zoo_model: Callable[[str], Path], tmp_path: Path
) -> None:
    path = zoo_model(name)
    result = ai_vmm.compile(
        path, "cuda:0", tmp_path / "m.vmm", precision=precision, force_quantize=True
    )
    part = result.manifest["partitions"][0]
    assert part["target"] == "cuda" and part["config"]["precision"] == precision
    compiled = ai_vmm.runtime.load(tmp_path / "m.vmm")
    session = ort.InferenceSession(str(path))
    tol = FP32_TOL if precision == "fp32" else FP16_TOL
    for batch in (1, 4):
        feeds = zoo.example_inputs(name, batch, dims={"seq": 12})
        expected = session.run(None, feeds)
        got = compiled.run(feeds)
        for spec, want in zip(session.get_outputs(), expected, strict=True):
            np.testing.assert_allclose(got[spec.name], want, **tol)


@pytest.mark.gpu
@GPU
def test_gpu_torch_source_compiles_the_frontends_program(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 64, 10),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    result = ai_vmm.compile(module, "cuda:0", tmp_path / "t.vmm", example_inputs=(x,))
    config = result.manifest["partitions"][0]["config"]
    assert config["source"] == "torch", config.get("source_note")
    compiled = ai_vmm.runtime.load(tmp_path / "t.vmm")
    name = compiled.inputs[0].name
    got = compiled.run({name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(next(iter(got.values())), module(x).numpy(), **FP32_TOL)


@pytest.mark.gpu
@GPU
def test_gpu_torch_source_at_fp16_builds_or_falls_back_to_onnx(tmp_path: Path) -> None:
    """Issue 18: this module through the torch frontend at fp16 failed in the cuda target's
    re-export of the program, and the compile did not fall back. Now it builds from the torch
    program or from the ONNX graph (saying why), and matches the float module."""
    module = convformer()
    result = ai_vmm.compile(
        module,
        "cuda:0",
        tmp_path / "c.vmm",
        example_inputs=(torch.randn(2, 3, 32, 32),),
        dynamic_shapes={"x": {0: "batch"}},
        precision="fp16",
        force_quantize=True,
        tune=False,
    )
    config = result.manifest["partitions"][0]["config"]
    assert config["precision"] == "fp16"
    if config["source"] != "torch":
        assert "the ONNX graph was compiled instead" in config["source_note"]
    compiled = ai_vmm.runtime.load(tmp_path / "c.vmm")
    name = compiled.inputs[0].name
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        got = next(iter(compiled.run({name: x.numpy()}).values()))
        with torch.no_grad():
            np.testing.assert_allclose(got, module(x).numpy(), **FP16_TOL)


@pytest.mark.gpu
@GPU
def test_gpu_cuda_graph_replay_matches_plain_runs(
    zoo: ModuleType, zoo_model: Callable[[str], Path], tmp_path: Path
) -> None:
    path = zoo_model("resnet")
    model = ir.load(path)
    device = CudaTarget().discover(ai_vmm.hardware.detect_cpu())[0][0]
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {"batch": 1}})
    payload = CudaTarget().codegen(model, device, options, tmp_path)
    assert payload.config["cuda_graphs"] is True
    outputs = tuple(v.name or "" for v in model.graph.outputs)
    graphs = create_executor("cuda", tmp_path / payload.entry, "0", payload.config, outputs)
    plain = create_executor(
        "cuda", tmp_path / payload.entry, "0", {**payload.config, "cuda_graphs": False}, outputs
    )
    for batch in (1, 3, 1):
        feeds = zoo.example_inputs("resnet", batch)
        np.testing.assert_allclose(
            graphs.run(feeds)["logits"], plain.run(feeds)["logits"], atol=1e-5
        )


@pytest.mark.gpu
@GPU
def test_gpu_and_openvino_heterogeneous_plan(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    path = tmp_path / "d2s.onnx"
    onnx.save(make_depth_to_space_model(), path)
    result = ai_vmm.compile(path, "cuda:0,openvino:CPU", tmp_path / "h.vmm")
    targets = [p["target"] for p in result.manifest["partitions"]]
    assert "cuda" in targets and "openvino" in targets, targets
    verification = result.report["verification"]
    assert verification.get("passed") is True, verification
    compiled = ai_vmm.runtime.load(tmp_path / "h.vmm")
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    expected = ort.InferenceSession(str(path)).run(None, feeds)[0]
    np.testing.assert_allclose(compiled.run(feeds)["y"], expected, **FP32_TOL)
