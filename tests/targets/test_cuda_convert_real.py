"""The cuda target's ONNX -> torch conversion on the real public models (models/realmodels.py),
run eagerly on the CPU on their real inputs and compared with ONNX Runtime.

Issue 18 asks for "every model that exports": this is the corpus it is measured on. Each model
is canonicalized first, as the cuda target receives it. All 15 convert (chars2vec, the last,
since its counted Loops run as a scan).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from ai_vmm.passes.canonicalize import canonicalize  # noqa: E402
from ai_vmm.targets.cuda_convert import to_torch  # noqa: E402
from tests_support import fetched_realmodels  # noqa: E402

CONVERTS = [
    "ppocr_v4_det",  # DB detector: nearest Resize x2 (asymmetric, floor)
    "ppocr_v4_rec",  # opset 12 Softmax (2-D semantics)
    "ppocr_cls",
    "ppocr_v6_det",  # MaxPool auto_pad SAME_UPPER
    "ppocr_v6_rec",
    "nudenet_320n",  # YOLOv8: anchors from Range over a float-cast size
    "ddddocr",  # bidirectional LSTM
    "silero_vad_sequence",  # LSTM, reflect Pad whose pads are constant shape arithmetic
    "silero_vad_op15",  # If on shapes (squeeze an axis when it is 1), LSTM
    "oww_melspectrogram",
    "oww_embedding",
    "minilm_l3",
    "magika",  # jax2tf: int32 shape arithmetic
    "smart_turn_v3",  # QDQ (QuantizeLinear/DequantizeLinear)
    "chars2vec",  # Keras LSTM: TF while loops exported as counted ONNX Loops
]


@pytest.fixture(scope="module")
def rm() -> ModuleType:
    return fetched_realmodels()


def _canonical(path: Path) -> ir.Model:
    model = ir.load(path)
    canonicalize(model, frozenset())
    return model


@pytest.mark.parametrize("name", CONVERTS)
def test_real_model_converts_and_matches_onnxruntime(rm: ModuleType, name: str) -> None:
    path = rm.model_path(name)
    module = to_torch(_canonical(path)).eval()
    # The reference is ONNX Runtime without graph optimizations: on a QDQ model its optimized
    # run uses integer kernels that round differently from the QDQ definition (smart_turn_v3:
    # 8e-4 on a 1e-2 output, ours 3e-8 from the unoptimized run).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for feed in rm.samples(name)[:2]:
        expected = session.run(None, feed)
        with torch.no_grad():
            got = module(*[torch.from_numpy(np.asarray(feed[n])) for n in module.input_names])
        assert len(got) == len(expected)
        for have, want in zip(got, expected, strict=True):
            have = have.numpy()
            assert have.shape == want.shape and have.dtype == want.dtype
            if want.dtype.kind != "f":
                np.testing.assert_array_equal(have, want)
                continue
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(have, want, rtol=1e-3, atol=3e-4 * scale)


@pytest.mark.heavy
@pytest.mark.parametrize("name", CONVERTS)
def test_real_model_exports_with_its_dynamic_axes(rm: ModuleType, name: str) -> None:
    """The cuda target's ``torch.export`` step (on the CPU) on each converted real model: the
    program runs at the model's real input sizes and agrees with the module (about 2 minutes
    for the 15)."""
    from ai_vmm.driver import normalize_dims
    from ai_vmm.targets import cuda_export
    from ai_vmm.targets.base import axis_symbol

    model = ir.load(rm.model_path(name))
    normalize_dims(model)  # PP-OCR's classifier writes its batch as -1
    canonicalize(model, frozenset())
    module = to_torch(model).eval()
    inputs = list(model.graph.inputs)
    samples = rm.samples(name)
    sample_dims: dict[str, int] = {}
    bounds: dict[str, list[object]] = {}
    for value in inputs:
        sizes = [np.asarray(s[value.name]).shape for s in samples]
        axes: list[object] = []
        for axis, dim in enumerate(value.shape or []):
            if isinstance(dim, int):
                axes.append(None)
                continue
            sample_dims[axis_symbol(value, axis, dim)] = sizes[0][axis]
            largest = max(size[axis] for size in sizes)
            axes.append([1, max(cuda_export.DEFAULT_MAX_DIM, largest)])
        bounds[value.name or ""] = axes
    example, dims = cuda_export.example_inputs(inputs, bounds, sample_dims, "cpu")
    program, _ = cuda_export.export(module, example, module.arg_names, dims, inputs)
    for feed in samples[:2]:
        args = [torch.from_numpy(np.asarray(feed[n])) for n in module.input_names]
        with torch.no_grad():
            for have, want in zip(program.module()(*args), module(*args), strict=True):
                np.testing.assert_allclose(have.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
