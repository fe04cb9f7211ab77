"""Issue 13, case 6: every command-line mistake is one line and exit 2, with or without ``click``.

Before: each of these crashed with ``ModuleNotFoundError: No module named 'click'`` after a plain
``pip install .`` (cli.py imported click, which typer vendors as ``typer._click``) and exited 70
with the dev extras; ``vmmc inspect missing.onnx`` exited 6 and ``--target gpu`` suggested
nothing.

The default run checks the mistakes in a process where ``import click`` fails, as it does in a
plain install; the heavy test builds a real plain install (a fresh venv, ``pip install`` of this
source tree without extras) and runs the same mistakes through its ``vmmc`` script.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import onnx
import pytest
from reliability_support import compile_mlp

from tests_support import make_mlp_model

REPO = Path(__file__).resolve().parents[2]


def _cases(root: Path) -> list[tuple[list[str], str]]:
    """(arguments, what the one error line must say); every one must exit 2."""
    model = root / "m.onnx"
    if not model.exists():
        onnx.save(make_mlp_model(), model)
    artifact = root / "mlp.vmm"
    return [
        ([], "Missing command"),
        (["compile"], "Missing argument 'model'"),
        (["--bogus"], "No such option: --bogus"),
        (["bogus"], "No such command 'bogus'"),
        (["compile", str(model), "--bogus"], "No such option: --bogus"),
        (["compile", str(model), "--rtol", "abc"], "Invalid value for '--rtol'"),
        (["run", str(artifact)], "give --inputs FILE.npz or --random-inputs"),
        (["compile", str(root / "missing.onnx")], "model"),
        (["inspect", str(root / "missing.onnx")], "does not exist"),
        (["run", str(root / "missing.vmm"), "--random-inputs"], "does not exist"),
        (["run", str(artifact), "--inputs", str(root / "missing.npz")], "does not exist"),
        (["bench", str(root / "missing.onnx")], "does not exist"),
        (["compile", str(model), "--target", "gpu"], "did you mean --target cuda:0?"),
        (["compile", str(model), "--target", "openvno:CPU"], "did you mean --target openvino:CPU?"),
        (["compile", str(model), "--target", "npu"], "did you mean --target openvino:NPU?"),
        (["compile", str(model), "--target", "ort"], "did you mean --target onnxruntime:CPU?"),
    ]


# Runs every case through ``main`` in one process, with ``import click`` failing as it does in
# a plain install, and prints {args: [exit code, stderr]} as JSON.
NO_CLICK = """
import contextlib, importlib.abc, io, json, sys
class NoClick(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "click" or name.startswith("click."):
            raise ModuleNotFoundError("No module named 'click'", name="click")
sys.modules.pop("click", None)
sys.meta_path.insert(0, NoClick())
from ai_vmm.cli import main
results = {}
for args in json.loads(sys.argv[1]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    results[json.dumps(args)] = [code, stderr.getvalue()]
print(json.dumps(results))
"""


def _check(results: dict[str, tuple[int, str]], cases: list[tuple[list[str], str]]) -> None:
    for args, expected in cases:
        code, stderr = results[json.dumps(args)]
        lines = stderr.strip().splitlines()
        assert code == 2, (args, stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, stderr)
        assert expected in lines[0], (args, lines[0])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("usage")
    compile_mlp(root)
    return root


def test_usage_mistakes_without_click(root: Path) -> None:
    cases = _cases(root)
    done = subprocess.run(
        [sys.executable, "-c", NO_CLICK, json.dumps([args for args, _ in cases])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    _check(json.loads(done.stdout), cases)


@pytest.mark.heavy
def test_usage_mistakes_in_a_plain_pip_install(root: Path, tmp_path: Path) -> None:
    """A fresh venv, ``pip install`` of this tree without extras (about 3 minutes), then vmmc."""
    source = tmp_path / "src"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    has_click = subprocess.run([str(python), "-c", "import click"], capture_output=True)
    assert has_click.returncode != 0, "a plain install must not have click for this test"
    cases = _cases(root)
    results = {}
    for args, _ in cases:
        done = subprocess.run(
            [str(env_dir / "bin" / "vmmc"), *args], capture_output=True, text=True, timeout=300
        )
        results[json.dumps(args)] = (done.returncode, done.stderr)
    _check(results, cases)
    command = [str(env_dir / "bin" / "vmmc"), "compile", str(root / "m.onnx")]
    command += ["-o", str(tmp_path / "plain.vmm"), "--no-tune", "--target", "onnxruntime:CPU"]
    compiled = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert compiled.returncode == 0, compiled.stderr
