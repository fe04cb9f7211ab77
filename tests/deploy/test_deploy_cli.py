"""``vmmc deploy``: writes the chosen artifact and its explanation; failures write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from ai_vmm.cli import main
from ai_vmm.runtime import load
from tests_support import make_mlp_model


def test_deploy_writes_artifact_and_explanation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx.save(make_mlp_model(), tmp_path / "mlp.onnx")
    rng = np.random.default_rng(0)
    (tmp_path / "x").mkdir()
    for index in range(6):  # one sample per file, as vmmc compile --sample reads them
        np.savez(tmp_path / "x" / f"{index}.npz", x=rng.standard_normal((1, 16)).astype(np.float32))
    store, out = tmp_path / "store", tmp_path / "out"
    args = ["deploy", str(tmp_path / "mlp.onnx"), "-o", str(out), "--store", str(store)]
    args += ["--samples", str(tmp_path / "x"), "--seconds", "0.1"]
    code = main([*args, "-c", "max_latency_ms=100", "-c", "preferred_hardware=CPU"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "chosen       " in printed and "wrote" in printed
    record = json.loads((out / "explanation.json").read_text())
    assert record["constraints"]["max_latency_ms"] == 100.0
    assert record["samples"]["count"] == 6
    assert (out / "explanation.txt").read_text().startswith("model ")
    with load(out / "model.vmm") as model:  # an ordinary artifact, runnable anywhere
        assert model.run({"x": np.ones((1, 16), np.float32)})["y"].shape == (1, 8)
    # Impossible: exit 8, the best achievable on stderr, nothing written.
    failed = tmp_path / "failed"
    code = main(
        [
            "deploy",
            str(tmp_path / "mlp.onnx"),
            "-o",
            str(failed),
            "--store",
            str(store),
            "--samples",
            str(tmp_path / "x"),
            "--seconds",
            "0.1",
            "-c",
            "max_latency_ms=1e-9",
        ]
    )
    assert code == 8
    assert "best p95 latency" in capsys.readouterr().err
    assert not failed.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-c", "max_latency=3"], "unknown constraint 'max_latency'"),
        (["-c", "preferred_hardware=TPU"], "unknown hardware 'TPU'"),
        (["--samples", "/no/such.npz"], "does not exist"),
    ],
)
def test_bad_command_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    onnx.save(make_mlp_model(), tmp_path / "mlp.onnx")
    code = main(["deploy", str(tmp_path / "mlp.onnx"), "-o", str(tmp_path / "o"), *extra])
    assert code in (2, 8)
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_refuses_a_foreign_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx.save(make_mlp_model(), tmp_path / "mlp.onnx")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code = main(["deploy", str(tmp_path / "mlp.onnx"), "-o", str(tmp_path / "mine")])
    assert code == 2 and "did not write" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
