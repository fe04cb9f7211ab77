"""--input NAME[SHAPE] parsing and application (ovc syntax)."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from ai_vmm.runtime import CompileError
from ai_vmm.signature import apply_input_shapes, model_signature, parse_input_specs
from tests_support import make_two_input_model


def test_parse_specs() -> None:
    parsed = parse_input_specs(["pixel_values[1,3,224,224]", "ids[1,?],mask[-1,1..128]", "s[]"])
    assert parsed == {
        "pixel_values": [1, 3, 224, 224],
        "ids": [1, None],
        "mask": [None, {"min": 1, "max": 128}],
        "s": [],
    }
    assert parse_input_specs(["a[2..]"]) == {"a": [{"min": 2}]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("x", r"is not NAME\[SHAPE\]"),
        ("x[1,a]", "is not a size"),
        ("x[4..2]", "empty range"),
        ("x[-3]", "negative size"),
    ],
)
def test_parse_errors(spec: str, message: str) -> None:
    with pytest.raises(CompileError, match=message):
        parse_input_specs([spec])


def test_apply_keeps_symbols_and_records_bounds() -> None:
    model = ir.serde.deserialize_model(make_two_input_model())
    bounds = apply_input_shapes(model, parse_input_specs(["ids[1,?]", "mask[1,1..64]"]))
    inputs, _ = model_signature(model)
    assert [spec.shape for spec in inputs] == [(1, "seq"), (1, "seq")]
    assert bounds == {"mask": [1, {"min": 1, "max": 64}]}


def test_apply_errors() -> None:
    model = ir.serde.deserialize_model(make_two_input_model())
    with pytest.raises(CompileError, match="3 dimensions given, the model.s input has 2"):
        apply_input_shapes(model, {"ids": [1, 2, 3]})
