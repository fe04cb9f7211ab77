"""scripts/carry_pack.py (the device carry's packing of large models) gives back every byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests_support import load_module

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("size", [0, 1, 4097, 40_003])
def test_a_packed_file_unpacks_to_the_same_bytes(tmp_path: Path, size: int) -> None:
    script = load_module(REPO / "scripts" / "carry_pack.py", "carry_pack")
    rng = np.random.default_rng(size)
    weights = rng.standard_normal(size // 4).astype(np.float32).tobytes()
    data = (weights + b"header" * size)[:size]  # not a multiple of 4, floats and text
    source = tmp_path / "model.onnx"
    source.write_bytes(data)
    packed = tmp_path / "carry" / "model.onnx.bs4.xz"
    packed.parent.mkdir()
    assert script.main(["pack", str(source), str(packed)]) == 0
    assert script.unpack(packed) == tmp_path / "carry" / "model.onnx"
    assert (tmp_path / "carry" / "model.onnx").read_bytes() == data


def test_a_file_without_the_suffix_is_refused(tmp_path: Path) -> None:
    script = load_module(REPO / "scripts" / "carry_pack.py", "carry_pack")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(SystemExit, match="not a .bs4.xz file"):
        script.unpack(tmp_path / "model.onnx")
