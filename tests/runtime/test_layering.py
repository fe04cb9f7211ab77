"""Which way imports point (../shared/design.md), checked on every module's source.

runtime < passes < targets < compiler: an import only ever points down; vendor SDKs only inside
their own target / executor; targets never import each other; frontends never import each other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {
    "runtime": "ai_vmm.runtime",
    "passes": "ai_vmm.passes",
    "targets": "ai_vmm.targets",
    "compiler": "ai_vmm",
}
VENDOR = {"openvino", "onnxruntime", "nncf", "torch", "tensorflow", "tensorrt", "tf2onnx"}
HEAVY = ("torch", "tensorflow", "nncf", "onnxscript")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _is(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("path", _modules("runtime"), ids=lambda p: p.name)
def test_runtime_imports_nothing_above_it(path: Path) -> None:
    for name in _imports(path):
        assert not (_is(name, "ai_vmm") and not _is(name, "ai_vmm.runtime")), name
        root = name.split(".")[0]
        # torch is the cuda target's runtime (AOTInductor packages, the LM's exported step):
        # its executors alone.
        cuda = path.name in ("cuda.py", "cuda_lm.py") and path.parent.name == "executors"
        if not (root == "torch" and cuda):
            assert root not in {"torch", "tensorflow", "nncf", "onnxscript", "onnx_ir"}, name
        if name.split(".")[0] in VENDOR:
            assert path.parent.name == "executors", f"{path.name} imports {name}"


@pytest.mark.parametrize("path", _modules("passes"), ids=lambda p: p.name)
def test_passes_import_only_ir_and_runtime(path: Path) -> None:
    for name in _imports(path):
        if _is(name, "ai_vmm"):
            assert _is(name, "ai_vmm.passes") or _is(name, "ai_vmm.runtime"), name
        assert name.split(".")[0] not in VENDOR, name


@pytest.mark.parametrize("path", _modules("targets"), ids=lambda p: p.name)
def test_targets_never_import_each_other_or_the_compiler(path: Path) -> None:
    # A target may be split into companion modules named <target>_<part>.py (openvino_quant.py
    # belongs to openvino); they share the target's imports, nncf being OpenVINO's compressor.
    prefix = path.stem.split("_")[0]
    own = prefix if (path.parent / f"{prefix}.py").is_file() else path.stem
    for name in _imports(path):
        if _is(name, "ai_vmm"):
            allowed = (
                _is(name, "ai_vmm.runtime")
                or _is(name, "ai_vmm.passes")
                or name in ("ai_vmm.targets.base", f"ai_vmm.targets.{own}")
                or _is(name, f"ai_vmm.targets.{own}")
                or name.startswith(f"ai_vmm.targets.{own}_")
            )
            assert allowed, f"{path.name} imports {name}"
        root = name.split(".")[0]
        if root in VENDOR:
            allowed_pairs = {("cuda", "torch"), ("openvino", "nncf")}
            assert root == own or (own, root) in allowed_pairs, f"{path.name}: {name}"


@pytest.mark.parametrize("path", _modules("compiler/frontends"), ids=lambda p: p.name)
def test_frontends_never_import_each_other(path: Path) -> None:
    if path.name == "__init__.py":
        return  # the dispatcher imports each frontend lazily, by design
    for name in _imports(path):
        if _is(name, "ai_vmm.frontends"):
            assert name == f"ai_vmm.frontends.{path.stem}", name


def test_import_runtime_stays_light() -> None:
    code = (
        "import sys, ai_vmm.runtime, ai_vmm\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "upper = [m for m in sys.modules if m.startswith(('ai_vmm.passes', 'ai_vmm.targets',"
        " 'ai_vmm.driver', 'ai_vmm.frontends'))]\n"
        "print(heavy, upper)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


def _on_top(path: Path) -> bool:
    """The public API (``__init__``) and the CLI (``cli.py``, ``cli_*.py``) sit on every floor."""
    return path.parent.name == "compiler" and (
        path.name in ("__init__.py", "cli.py") or path.name.startswith("cli_")
    )


@pytest.mark.parametrize("path", _modules("compiler"), ids=lambda p: p.name)
def test_compiler_never_imports_deploy_or_serve(path: Path) -> None:
    if _on_top(path):
        return
    for name in _imports(path):
        assert not (_is(name, "ai_vmm.deploy") or _is(name, "ai_vmm.serve")), name


@pytest.mark.parametrize("path", _modules("deploy"), ids=lambda p: p.name)
def test_deploy_never_imports_serve(path: Path) -> None:
    for name in _imports(path):
        assert not _is(name, "ai_vmm.serve"), name
