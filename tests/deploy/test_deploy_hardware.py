"""Hardware classes in the seed's vocabulary, from inventories of machines this one is not."""

from __future__ import annotations

from ai_vmm.deploy.hardware import HARDWARE_NAMES, SEED_NAMES, classify, format_hardware
from ai_vmm.runtime.devices import CpuInfo, Device, GpuInfo, Inventory

INTEL = CpuInfo("Intel(R) Core(TM) Ultra 7 155H", "GenuineIntel", "x86_64", 16, 22, ("avx2",), 1)
EPYC = CpuInfo("AMD EPYC", "AuthenticAMD", "x86_64", 2, 2, ("avx2",), 1)
M2 = CpuInfo("Apple M2", "Apple", "arm64", 8, 8, (), 1)


def _by_name(inventory: Inventory, system: str = "Linux", kfd: bool = False) -> dict[str, object]:
    found = classify(inventory, system=system, exists=lambda path: kfd and path == "/dev/kfd")
    assert [h.name for h in found] == list(HARDWARE_NAMES)
    return {h.name: h for h in found}


def test_intel_laptop_with_gpu_and_npu() -> None:
    inventory = Inventory(
        INTEL,
        (
            Device("openvino", "CPU", "cpu", "Intel Core Ultra"),
            Device("openvino", "GPU.0", "gpu", "Intel Arc"),
            Device("openvino", "NPU", "npu", "Intel AI Boost"),
            Device("onnxruntime", "CPU", "cpu"),
        ),
        notes=("NVML not available: libnvidia-ml.so.1 not found (no NVIDIA driver installed)",),
    )
    found = _by_name(inventory)
    assert [d.key for d in found["INTEL_CPU"].devices] == ["openvino:CPU", "onnxruntime:CPU"]
    assert [d.key for d in found["INTEL_GPU"].devices] == ["openvino:GPU.0"]
    assert [d.key for d in found["INTEL_NPU"].devices] == ["openvino:NPU"]
    assert not found["NVIDIA_GPU"].present
    assert "libnvidia-ml.so.1 not found" in found["NVIDIA_GPU"].why
    assert "host CPU is Intel" in found["AMD_CPU"].why


def test_amd_server_with_nvidia_gpu() -> None:
    inventory = Inventory(
        EPYC,
        (
            Device("openvino", "CPU", "cpu"),
            Device("onnxruntime", "CPU", "cpu"),
            Device("cuda", "0", "gpu", "NVIDIA H200", {"compute_capability": "9.0"}),
        ),
        gpus=(GpuInfo(0, "NVIDIA H200", 141 << 30, "9.0", 700.0),),
    )
    found = _by_name(inventory, kfd=True)
    assert (
        found["NVIDIA_GPU"].present
        and "NVIDIA H200 (141 GiB, limit 700 W)" in found["NVIDIA_GPU"].detail
    )
    assert found["AMD_CPU"].present and not found["INTEL_CPU"].present
    assert "AuthenticAMD" in found["INTEL_CPU"].why
    assert found["INTEL_GPU"].why == "OpenVINO lists no GPU device (its devices: CPU)"
    assert "/dev/kfd" in found["AMD_GPU"].why


def test_gpu_seen_by_nvml_but_no_cuda_target() -> None:
    inventory = Inventory(
        EPYC,
        (Device("onnxruntime", "CPU", "cpu"),),
        gpus=(GpuInfo(0, "NVIDIA A10", 24 << 30, "8.6"),),
        notes=("cuda: no CUDA device (a CPU-only PyTorch build)",),
    )
    why = _by_name(inventory)["NVIDIA_GPU"].why
    assert why.startswith("NVML sees NVIDIA A10 but no target can drive it")
    assert "CPU-only PyTorch" in why


def test_apple_silicon() -> None:
    inventory = Inventory(M2, (Device("onnxruntime", "CPU", "cpu"),))
    found = _by_name(inventory, system="Darwin")
    assert found["APPLE_SILICON"].present
    assert not found["ARM_CPU"].present
    linux = _by_name(inventory, system="Linux")
    assert linux["ARM_CPU"].present and "not an Apple Silicon Mac" in linux["APPLE_SILICON"].why


def test_every_seed_name_has_a_reason_when_absent() -> None:
    found = _by_name(Inventory(EPYC, (Device("onnxruntime", "CPU", "cpu"),)))
    for name in SEED_NAMES:
        assert found[name].present or found[name].why
    text = format_hardware(list(found.values()))  # type: ignore[arg-type]
    assert "AMD_CPU        present  onnxruntime:CPU" in text
    assert "QUALCOMM_NPU   absent" in text
