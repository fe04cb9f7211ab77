"""``vmmc generate``: streams the reply of a real (tiny) artifact; one-line errors otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from lm_support import tiny_artifact

import ai_vmm
from ai_vmm.cli import main


def test_generate_streams_the_reply(capsys: pytest.CaptureFixture[str]) -> None:
    artifact = tiny_artifact("llama", "onnxruntime:CPU")
    with ai_vmm.load(artifact) as lm:
        chat = [{"role": "user", "content": "What is a hash table?"}]
        expected = lm.generate(chat, max_new_tokens=12, min_new_tokens=12).text  # type: ignore[union-attr]
        raw = lm.generate("def f(x):", max_new_tokens=6).text  # type: ignore[union-attr]
    code = main(["generate", str(artifact), "What is a hash table?", "--max-new-tokens", "12"])
    out = capsys.readouterr()
    assert code == 0
    # EOS is not blocked here: the reply is the blocked one up to where the model stops.
    assert expected.startswith(out.out.rstrip("\n")) and out.out.strip()
    assert "new tokens" in out.err and "onnxruntime:CPU" in out.err
    assert main(["generate", str(artifact), "def f(x):", "--raw", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == raw


def test_generate_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, mlp_path: Path
) -> None:
    assert main(["generate", str(tmp_path / "missing.gguf"), "hi"]) == 2
    assert "missing.gguf" in capsys.readouterr().err
    assert main(["generate", str(mlp_path), "hi"]) == 6
    assert "causal LM" in capsys.readouterr().err
    artifact = tiny_artifact("llama", "onnxruntime:CPU")
    assert main(["generate", str(artifact), "hi", "--top-p", "3"]) == 6
    assert "top_p" in capsys.readouterr().err
    assert main(["run", str(artifact), "--random-inputs"]) == 6
    assert "causal LM" in capsys.readouterr().err
