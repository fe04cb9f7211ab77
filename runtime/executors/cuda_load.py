"""Loading an AOTInductor package with the model runner itself, not PyTorch's package loader.

Why: on the GPU machine (an H200, torch 2.11), ``torch._inductor.aoti_load_package`` in a fresh
process first spends ~35 s in ``get_device_information`` (it compiles and dlopens a probe for the
CPU's vector ISA, only to log a warning if it differs from the build machine's) and then dies with
a segmentation fault inside the C++ ``AOTIModelPackageLoader`` (scripts/gpu_probe.py; docs/gpu.md).
The crash itself came from the wrapper library's C++ runtime: it binds ``libstdc++`` symbols
from the process's global scope, where a process that has only imported torch has none; the
runtime is promoted to global scope before any package is opened (``_prepare``).

The package is a zip of the compiled wrapper ``.so`` (weights inside it by default), its kernels
(``.cubin``) and metadata; the runner class PyTorch's loader wraps,
``torch._C._aoti.AOTIModelContainerRunnerCuda`` (``...Cpu`` for CPU packages), takes the ``.so``
and the kernels' folder directly. The executor checks what the package loader's metadata check
would (PyTorch version, compute capability) itself, from the payload's config.

A package whose weights are stored beside the ``.so`` (``aot_inductor.package_constants_in_so``
off) or that holds no ``.so`` (``package_cpp_only``) is left to PyTorch's loader.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

_MODEL_DIR = "data/aotinductor/model/"
_WEIGHT_SUFFIXES = (".blob", ".pt", ".bin")


class DirectRunner:
    """``runner(*tensors) -> list of tensors`` over an extracted package (kept while it lives)."""

    def __init__(self, runner: Any, folder: Path) -> None:
        self._runner = runner
        self.folder = folder
        weakref.finalize(self, shutil.rmtree, str(folder), True)

    def __call__(self, *tensors: Any) -> list[Any]:
        return list(self._runner.run(list(tensors)))


def load_direct(torch: Any, entry: Path, device: Any) -> DirectRunner | None:
    """The package's model runner for ``device`` (``torch.device``), or None when this package
    needs PyTorch's own loader (module doc)."""
    with zipfile.ZipFile(entry) as archive:
        names = [n for n in archive.namelist() if _MODEL_DIR in n and not n.endswith("/")]
        libraries = [n for n in names if n.endswith(".so")]
        if len(libraries) != 1 or any(n.endswith(_WEIGHT_SUFFIXES) for n in names):
            return None
        built_for = _device_key(archive, libraries[0])
        if built_for is not None and built_for != device.type:
            raise ValueError(
                f"the package was compiled for {built_for}, not for {device.type} (rebuild it "
                f"for the device it runs on)"
            )
        folder = Path(tempfile.mkdtemp(prefix="ai-vmm-pt2-"))
        try:
            for name in names:
                relative = PurePosixPath(name).name
                with archive.open(name) as src, open(folder / relative, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    library = str(folder / PurePosixPath(libraries[0]).name)
    try:
        runner = _runner_class(torch, device)(library, folder, device)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return DirectRunner(runner, folder)


def _device_key(archive: zipfile.ZipFile, library: str) -> str | None:
    """The device the package was compiled for (its metadata's ``AOTI_DEVICE_KEY``)."""
    import json

    metadata = library[: -len(".so")] + "_metadata.json"
    try:
        return str(json.loads(archive.read(metadata))["AOTI_DEVICE_KEY"]).split(":")[0]
    except (KeyError, ValueError):
        return None


def _prepare(torch: Any, device: Any) -> None:
    """What the process needs before a package's library is opened (``AI_VMM_AOTI_PRELOAD``,
    comma-separated; default ``libstdcxx,cuda``):

    - ``libstdcxx``: the C++ runtime's symbols made global. The wrapper library does not list
      ``libstdc++`` among its needed libraries; in a process that has only imported torch (which
      loads it with local scope) the wrapper's ``std::regex`` in ``parse_device_str`` crashed
      (SIGSEGV, torch 2.11, H200). Opened with ``RTLD_GLOBAL`` first, the same package loads
      and runs (scripts/gpu_probe.py, docs/gpu.md); importing ONNX Runtime first did the same.
    - ``cuda``: a CUDA context on the device; ``libcuda``: the driver library opened globally;
      ``triton``: Triton's CUDA driver loaded (the other variants tried on the GPU machine).
    """
    import os

    for step in os.environ.get("AI_VMM_AOTI_PRELOAD", "libstdcxx,cuda").split(","):
        if step == "libstdcxx":
            _global_cxx_runtime()
        elif step == "cuda" and device.type == "cuda":
            torch.zeros(1, device=device)
        elif step == "libcuda":
            import ctypes

            ctypes.CDLL("libcuda.so.1", mode=os.RTLD_GLOBAL | os.RTLD_NOW)
        elif step == "triton":
            from triton.runtime.driver import driver

            driver.active.get_current_device()
            driver.active.utils  # noqa: B018 (loads Triton's CUDA helpers)


def _global_cxx_runtime() -> None:
    """``libstdc++`` with global scope (promoted if torch already loaded it locally)."""
    import contextlib
    import ctypes
    import os

    with contextlib.suppress(OSError):  # no libstdc++ here (not glibc): nothing to promote
        ctypes.CDLL("libstdc++.so.6", mode=os.RTLD_GLOBAL | os.RTLD_NOW)


def _runner_class(torch: Any, device: Any) -> Callable[[str, Path, Any], Any]:
    aoti = torch._C._aoti
    if device.type == "cpu":

        def cpu(library: str, folder: Path, dev: Any) -> Any:
            _prepare(torch, dev)
            return aoti.AOTIModelContainerRunnerCpu(library, 1)

        return cpu

    def cuda(library: str, folder: Path, dev: Any) -> Any:
        _prepare(torch, dev)
        name = f"cuda:{dev.index or 0}"
        try:  # run_single_threaded (our lock serializes calls; CUDA-graph capture needs it)
            return aoti.AOTIModelContainerRunnerCuda(library, 1, name, str(folder), True)
        except TypeError:  # a PyTorch whose runner takes no such flag
            return aoti.AOTIModelContainerRunnerCuda(library, 1, name, str(folder))

    return cuda


def load_package(torch: Any, entry: Path, device: Any) -> Any:
    """A callable runner of the package on ``device``: the direct runner where it applies
    (``AI_VMM_AOTI_LOADER=torch`` turns it off), else ``torch._inductor.aoti_load_package``."""
    import os

    if os.environ.get("AI_VMM_AOTI_LOADER", "direct") != "torch":
        runner = load_direct(torch, entry, device)
        if runner is not None:
            return runner
    index = device.index if device.type == "cuda" and device.index is not None else -1
    _prepare(torch, device)
    return torch._inductor.aoti_load_package(
        str(entry), run_single_threaded=True, device_index=index
    )
