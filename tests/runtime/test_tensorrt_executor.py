"""The TensorRT executor's checks before TensorRT sees an engine, and its CUDA plumbing.

engine.json and the version / compute-capability check run everywhere. The CUDA parts (GPU
listing, device buffers and the stream, through cuda-python) run where a GPU and cuda-python
are (the GPU machine); loading a real engine needs TensorRT, which is not installable here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from ai_vmm.runtime.errors import ArtifactError, DeviceError
from ai_vmm.runtime.executors.tensorrt import (
    ENGINE_INFO,
    ENGINE_INFO_FORMAT,
    CudaStream,
    TensorRtExecutor,
    check_engine_info,
    cuda_gpus,
    device_index,
    profile_message,
    read_engine_info,
)

INFO = {
    "format": ENGINE_INFO_FORMAT,
    "tensorrt": "10.3.0",
    "gpu": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "precision": "fp32",
    "profiles": {},
}


def _write(path: Path, info: object) -> Path:
    path.write_text(json.dumps(info))
    return path


def test_matching_engine_passes_the_check() -> None:
    summary = check_engine_info(INFO, tensorrt_version="10.3.0", compute_capability="9.0")
    assert summary == "TensorRT 10.3.0 engine for compute capability 9.0 (NVIDIA H100 80GB HBM3)"


def test_other_tensorrt_version_is_a_device_error_naming_both() -> None:
    with pytest.raises(DeviceError) as err:
        check_engine_info(INFO, tensorrt_version="10.5.0", compute_capability="9.0")
    message = str(err.value)
    assert "built with TensorRT 10.3.0" in message and "has TensorRT 10.5.0" in message
    assert "tensorrt==10.3.0" in message and "\n" not in message


def test_other_compute_capability_is_a_device_error_naming_both() -> None:
    with pytest.raises(DeviceError) as err:
        check_engine_info(
            INFO, tensorrt_version="10.3.0", compute_capability="8.6", gpu_name="RTX A6000"
        )
    message = str(err.value)
    assert "compute capability 9.0 (NVIDIA H100 80GB HBM3)" in message
    assert "RTX A6000 has 8.6" in message and "recompile on this GPU" in message


def test_engine_info_problems_are_artifact_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="missing"):
        read_engine_info(tmp_path / ENGINE_INFO)
    (tmp_path / ENGINE_INFO).write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        read_engine_info(tmp_path / ENGINE_INFO)
    _write(tmp_path / ENGINE_INFO, {**INFO, "format": 99})
    with pytest.raises(ArtifactError, match="format 99"):
        read_engine_info(tmp_path / ENGINE_INFO)
    _write(tmp_path / ENGINE_INFO, {**INFO, "tensorrt": ""})
    with pytest.raises(ArtifactError, match="lacks 'tensorrt'"):
        read_engine_info(tmp_path / ENGINE_INFO)
    assert read_engine_info(_write(tmp_path / ENGINE_INFO, INFO))["tensorrt"] == "10.3.0"


def test_executor_checks_engine_json_before_tensorrt(tmp_path: Path) -> None:
    (tmp_path / "model.engine").write_bytes(b"not an engine")
    with pytest.raises(ArtifactError, match="engine.json is missing"):
        TensorRtExecutor(tmp_path / "model.engine", "0", {}, ("y",))


def test_executor_without_tensorrt_is_a_device_error(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    (tmp_path / "model.engine").write_bytes(b"not an engine")
    _write(tmp_path / ENGINE_INFO, INFO)
    with pytest.raises(DeviceError, match="artifact needs TensorRT, which is not importable"):
        TensorRtExecutor(tmp_path / "model.engine", "0", {}, ("y",))


def test_device_names_are_cuda_indices() -> None:
    assert device_index("1") == 1
    with pytest.raises(DeviceError, match="not a CUDA GPU index"):
        device_index("GPU.0")


def test_profile_message_names_the_range() -> None:
    message = profile_message("x", (9, 3), ((1, 3), (1, 3), (8, 3)))
    assert "[9, 3]" in message and "[1, 3]..[8, 3]" in message and "--input x[" in message


def test_gpu_listing_never_raises() -> None:
    gpus, note = cuda_gpus()
    assert gpus or (note and ("cuda-python" in note and "NVML" in note))


@pytest.mark.gpu
def test_gpu_listing_and_device_buffers_on_a_real_gpu() -> None:
    """cuda-python on a GPU: the listing the target names devices by, and a buffer round trip
    through the executor's stream (what a TensorRT run does around ``execute_async_v3``)."""
    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python is not installed")
    gpus, note = cuda_gpus()
    if not gpus:
        pytest.skip(f"no CUDA GPU: {note}")
    assert gpus[0].index == 0 and gpus[0].name
    major, minor = gpus[0].compute_capability.split(".")
    assert int(major) >= 3 and minor.isdigit()
    assert gpus[0].memory_bytes > 1 << 30
    stream = CudaStream(0)
    try:
        assert stream.handle != 0
        data = np.arange(1000, dtype=np.float32).reshape(10, 100)
        address = stream.to_device("x", data)
        assert stream.buffer("x", data.nbytes) == address  # reused, not reallocated
        back = np.empty_like(data)
        stream.to_host(back, address)
        stream.synchronize()
        np.testing.assert_array_equal(back, data)
        bigger = np.ones((2000,), dtype=np.float64)
        address2 = stream.to_device("x", bigger)  # grows the buffer
        out = np.zeros_like(bigger)
        stream.to_host(out, address2)
        stream.synchronize()
        np.testing.assert_array_equal(out, bigger)
        empty = np.empty((0, 4), dtype=np.float32)
        stream.to_device("e", empty)
        stream.synchronize()
    finally:
        stream.close()
        stream.close()
