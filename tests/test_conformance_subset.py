"""A fast slice of the ONNX node-test conformance run (``scripts/conformance.py``).

About forty cases across op families, each a case that once lost (or could lose) against the raw
backends: the compiled artifact of every target must pass wherever the raw backend passes on the
raw model. The full run writes ``docs/conformance.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests_support import load_module

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "conformance.py"

# case name -> the onnx.backend.test.case.node module that generates it (importing only these
# modules keeps case generation under a second; collect_testcases() takes ~15 s).
CASES = {
    # elementwise, reductions, casts
    "test_add_bcast": "add",
    "test_relu": "relu",
    "test_sub_uint8": "sub",  # unsigned subtraction must not wrap on synthetic inputs
    "test_max_one_input": "max",  # OpenVINO IR drops the input name of a Parameter -> Result
    "test_reduce_sum_default_axes_keepdims_example": "reducesum",  # zero-size input folded
    "test_cast_FLOAT_to_FLOAT16": "cast",
    "test_castlike_FLOAT_to_FLOAT16": "castlike",  # type-only input removed by OpenVINO
    "test_isnan": "isnan",
    "test_bitshift_right_uint8": "bitshift",
    # linear algebra, convolution, normalization
    "test_matmul_2d": "matmul",
    "test_gemm_default_no_bias": "gemm",
    "test_conv_with_strides_padding": "conv",
    "test_maxpool_2d_default": "maxpool",
    "test_batchnorm_example": "batch_normalization",
    "test_layer_normalization_2d_axis0": "layernormalization",
    "test_softmax_axis_1": "softmax",
    "test_einsum_batch_matmul": "einsum",
    # shapes and indexing
    "test_reshape_reordered_all_dims": "reshape",
    "test_transpose_default": "transpose",
    "test_gather_0": "gather",
    "test_split_zero_size_splits_opset18": "split",
    "test_col2im": "col2im",  # ovc's offline passes fail on a runtime image shape
    "test_resize_downsample_sizes_nearest": "resize",  # sizes must resize spatial axes only
    "test_range_float_type_positive_delta": "rangeop",  # an empty range on random operands
    "test_top_k": "topk",
    "test_nonzero_example": "nonzero",
    "test_cumsum_1d": "cumsum",
    # quantization
    "test_qlinearmatmul_2D_uint8_float32": "qlinearmatmul",  # scales must be positive
    "test_dequantizelinear": "dequantizelinear",
    # attention
    "test_attention_4d_fp16": "attention",  # float16 outputs: tolerance in float16 ULPs
    "test_attention_local_window_ext_cache_float16_mask": "attention",  # lowered for OpenVINO
    "test_attention_4d_causal_nonpad_batch_prefill_expanded": "attention",  # full lengths
    # recurrent, control flow, sequences, strings
    "test_lstm_defaults": "lstm",
    "test_if_opt": "if_",  # shape inference typed a sequence as a tensor
    "test_loop11": "loop",
    "test_affine_grid_2d_expanded": "affinegrid",  # Identity elimination across scopes
    "test_split_to_sequence_1": "splittosequence",  # a folding rule crashed on this node
    "test_sequence_insert_at_back": "sequenceinsert",
    "test_dropout_default_old": "dropout",
    "test_string_concat": "string_concat",
}


def _load_script() -> ModuleType:
    """Import ``scripts/conformance.py`` as the module ``conformance``.

    Worker processes are spawned and unpickle tasks by module name, so the module is registered
    under its own name and the scripts folder (which the children inherit) goes on ``sys.path``.
    """
    sys.path.insert(0, str(SCRIPT.parent))
    return load_module(SCRIPT, "conformance")


@pytest.fixture(scope="module")
def conformance() -> ModuleType:
    return _load_script()


def test_compiled_artifacts_lose_no_case(conformance: ModuleType) -> None:
    pattern = "^(" + "|".join(CASES) + ")$"
    cases = conformance.load_cases(pattern, modules=sorted(set(CASES.values())))
    assert sorted(c.name for c in cases) == sorted(CASES)
    _, summaries = conformance.run_conformance(cases, list(conformance.TARGETS), jobs=2, quiet=True)
    losses = {t: s.losses for t, s in summaries.items() if s.losses}
    assert not losses, losses
    # The slice is not vacuous: the raw backends pass most of it.
    for summary in summaries.values():
        assert summary.raw_passed >= len(CASES) // 2, summary


def test_comparison_rules(conformance: ModuleType) -> None:
    import numpy as np

    compare = conformance.compare_value
    f32, i64 = np.float32, np.int64
    got, want = np.array([1.0, np.nan], f32), np.array([1.0005, np.nan], f32)
    assert compare(want, got, 1e-3, 1e-5, "y") is None
    assert compare(np.array([1, 2], i64), np.array([1, 3], i64), 1e-3, 1e-5, "y") is not None
    assert compare(np.array([1, 2], i64), np.array([1, 2], np.int32), 1e-3, 1e-5, "y")  # dtype
    assert compare(np.zeros((2, 3)), np.zeros((3, 2)), 1e-3, 1e-5, "y") is not None  # shape
    strings = np.array(["a", "b"], dtype=object)
    assert compare(strings, np.array(["a", "b"]), 1e-3, 1e-5, "y") is None
    assert compare([np.ones(2)], [np.ones(2)], 1e-3, 1e-5, "y") is None
    assert compare([np.ones(2)], [np.ones(2), np.ones(2)], 1e-3, 1e-5, "y") is not None
    assert compare(None, None, 1e-3, 1e-5, "y") is None
