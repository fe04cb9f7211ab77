"""vmmc: each bad input gives one clear line on stderr, a non-zero exit, nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ai_vmm.cli import main
from tests_support import make_mlp_model


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    onnx.save(make_mlp_model(), root / "mlp.onnx")
    assert main(["compile", str(root / "mlp.onnx"), "-o", str(root / "mlp.vmm"), "--no-tune"]) == 0
    return root / "mlp.vmm"


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_compile_inspect_run(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["inspect", str(built)]) == 0
    shown = capsys.readouterr().out
    assert "partitions" in shown and "node counts per stage" in shown and "candidates" in shown
    assert main(["inspect", str(built), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["manifest"]["partitions"][0]["id"] == "p0"
    np.savez(tmp_path / "x.npz", x=np.ones((3, 16), np.float32))
    assert (
        main(
            ["run", str(built), "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")]
        )
        == 0
    )
    with np.load(tmp_path / "y.npz") as out:
        assert out["y"].shape == (3, 8)
    assert main(["run", str(built), "--random-inputs"]) == 0


@pytest.mark.parametrize(
    ("content", "expected", "code"),
    [
        (None, "does not exist", 2),
        (b"plain text, not protobuf", "not a readable ONNX model", 2),
        ("truncated", "not a readable ONNX model", 2),
        ("unknown-domain", "no available target can run 1 node(s): mystery", 3),
    ],
    ids=["missing", "not-onnx", "truncated", "unknown-domain"],
)
def test_compile_bad_models(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | str | None,
    expected: str,
    code: int,
) -> None:
    model = tmp_path / "model.onnx"
    if content == "truncated":
        whole = make_mlp_model().SerializeToString()
        model.write_bytes(whole[: len(whole) // 3])
    elif content == "unknown-domain":
        onnx.save(make_mlp_model(domain_node=True), model)
    elif isinstance(content, bytes):
        model.write_bytes(content)
    before = _listing(tmp_path)
    assert main(["compile", str(model), "-o", str(tmp_path / "out.vmm")]) == code
    assert expected in _error_line(capsys)
    assert _listing(tmp_path) == before


def test_run_with_wrong_inputs(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        "name": ({"z": np.ones((1, 16), np.float32)}, "unknown input 'z'"),
        "shape": ({"x": np.ones((1, 15), np.float32)}, "axis 1 must be 16"),
        "dtype": ({"x": np.ones((1, 16), np.float64)}, "dtype float64, the model expects float32"),
    }
    for label, (arrays, expected) in cases.items():
        np.savez(tmp_path / f"{label}.npz", **arrays)
        assert (
            main(
                [
                    "run",
                    str(built),
                    "--inputs",
                    str(tmp_path / f"{label}.npz"),
                    "-o",
                    str(tmp_path / f"{label}-out.npz"),
                ]
            )
            == 6
        )
        assert expected in _error_line(capsys), label
        assert not (tmp_path / f"{label}-out.npz").exists()


def test_broken_artifacts(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tampered = tmp_path / "tampered.vmm"
    shutil.copytree(built, tampered)
    # The chosen target's payload (model.onnx or an OpenVINO IR, whichever won here).
    payload = sorted(f for f in (tampered / "p0").iterdir() if f.suffix in (".onnx", ".bin"))
    payload[0].write_bytes(b"swapped")
    assert main(["run", str(tampered), "--random-inputs"]) == 5
    assert "changed after compile" in _error_line(capsys)
    newer = tmp_path / "newer.vmm"
    shutil.copytree(built, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["format_version"] += 1
    (newer / "manifest.json").write_text(json.dumps(manifest))
    assert main(["run", str(newer), "--random-inputs"]) == 5
    assert "is newer than this runtime supports" in _error_line(capsys)


def test_unknown_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx.save(make_mlp_model(), tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", "openvino:GPU"]) == 7
    assert "available: openvino:CPU, onnxruntime:CPU" in _error_line(capsys)


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--debug", "compile", str(tmp_path / "absent.onnx")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_console_script_devices_json() -> None:
    vmmc = shutil.which("vmmc") or pytest.skip("vmmc console script not on PATH")
    out = subprocess.run([vmmc, "devices", "--json"], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert {"openvino", "onnxruntime"} <= {d["target"] for d in data["devices"]}
    assert data["cpu"]["logical_cores"] >= 1
    bad = subprocess.run(
        [sys.executable, "-m", "ai_vmm.cli", "run", "nowhere.vmm", "--random-inputs"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2  # a missing file is a usage error (issue 13)
    assert bad.stderr.strip() == "error: artifact nowhere.vmm does not exist"
