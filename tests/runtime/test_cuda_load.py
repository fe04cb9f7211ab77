"""The cuda executor's package loading (``runtime/executors/cuda_load.py``), on CPU packages:
the model runner over the extracted package gives the program's numbers, its folder goes with
it, and packages it does not handle go to PyTorch's loader."""

from __future__ import annotations

import gc
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ai_vmm.runtime.executors.cuda_load import DirectRunner, load_direct, load_package  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(
        module, (torch.randn(2, 3, 8, 8),), dynamic_shapes={"input": {0: batch}}
    )
    path = tmp_path_factory.mktemp("pkg") / "model.pt2"
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path, module


def test_direct_runner_matches_the_program(package: tuple[Path, torch.nn.Module]) -> None:
    path, module = package
    runner = load_direct(torch, path, torch.device("cpu"))
    assert isinstance(runner, DirectRunner)
    folder = runner.folder
    assert any(folder.glob("*.so"))
    for batch in (1, 5):
        x = torch.randn(batch, 3, 8, 8)
        (got,) = runner(x)
        torch.testing.assert_close(got, module(x), rtol=1e-5, atol=1e-5)
    del runner
    gc.collect()
    assert not folder.exists()


def test_packages_with_weights_beside_go_to_torchs_loader(
    package: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, module = package
    copy = tmp_path / "weights-beside.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(copy, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        prefix = src.namelist()[0].split("/")[0]
        dst.writestr(f"{prefix}/data/aotinductor/model/weights.blob", b"\0" * 8)
    assert load_direct(torch, copy, torch.device("cpu")) is None
    runner = load_package(torch, path, torch.device("cpu"))
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(runner(x)[0], module(x), rtol=1e-5, atol=1e-5)


def test_the_cxx_runtime_is_made_global_before_a_package_opens() -> None:
    """The GPU machine's crash (docs/gpu.md): a package's wrapper binds libstdc++ from the
    process's global scope, which a process that has only imported torch lacks. In a fresh
    process: not global after ``import torch``, global after the loader's preparation."""
    import subprocess
    import sys

    code = (
        "import ctypes, torch\n"
        "from ai_vmm.runtime.executors.cuda_load import _prepare\n"
        "def visible():\n"
        "    return hasattr(ctypes.CDLL(None), '_ZNSt6localeC1Ev')\n"
        "print(visible())\n"
        "_prepare(torch, torch.device('cpu'))\n"
        "print(visible())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["False", "True"]
