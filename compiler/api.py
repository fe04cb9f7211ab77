"""The public Python API: ``ai_vmm.compile`` and ``ai_vmm.load``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ai_vmm.driver import CompileOptions, CompileResult, Progress, compile_model
from ai_vmm.inputs import Tolerance


def compile(
    model: Any,
    target: str = "auto",
    output: str | Path | None = None,
    *,
    input_shapes: Sequence[str] = (),
    tune: bool = True,
    verify: bool = True,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    precision: str = "fp32",
    disable_passes: Sequence[str] = (),
    tune_seconds: float = 1.0,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    **frontend_options: Any,
) -> CompileResult:
    """Compile ``model`` into an artifact and return where it went and what was decided.

    Args:
        model: an ONNX file path or an ``onnx.ModelProto`` (other formats: see docs/frontends.md).
        target: ``auto`` (measure every available target here, keep the fastest), one device
            such as ``openvino:CPU`` or ``onnxruntime:CPU``, or a priority list of them.
        output: the artifact path (``NAME.vmm`` directory, or ``NAME.vmm.zip`` for one file);
            default ``<model stem>.vmm`` in the working directory.
        input_shapes: ovc-style ``NAME[SHAPE]`` specs, e.g. ``input_ids[1,?]`` or
            ``pixel_values[1,3,224,224]`` or ``input_ids[1,1..128]``.
        tune: choose among candidates by measurement; ``False`` uses the documented static rule
            and makes the whole artifact reproducible byte for byte.
        verify: compare every candidate with ONNX Runtime on the original model.
        rtol: relative tolerance of that comparison.
        atol: absolute tolerance of that comparison.
        precision: ``fp32`` (default), ``fp16`` or ``bf16`` inference precision.
        disable_passes: canonicalization steps to skip, by name.
        tune_seconds: timing budget per candidate when tuning.
        cache_dir: a compile cache directory (default: ``$AI_VMM_CACHE_DIR`` if set).
        progress: called with a short message as each stage starts.
        **frontend_options: what a frontend needs beyond the model (``example_inputs``,
            ``dynamic_shapes``, ``input_names`` for torch models).

    Raises:
        ai_vmm.VmmError: a subclass whose one-line message says what was wrong.
    """
    options = CompileOptions(
        target=target,
        input_shapes=tuple(input_shapes),
        tune=tune,
        verify=verify,
        tolerance=Tolerance(rtol=rtol, atol=atol),
        precision=precision,
        disabled_passes=tuple(disable_passes),
        tune_budget_s=tune_seconds,
    )
    return compile_model(
        model,
        output,
        options,
        cache_dir=cache_dir,
        progress=progress,
        frontend_options=frontend_options,
    )


def load(path: str | Path) -> Any:
    """Load an artifact (same as ``ai_vmm.runtime.load``)."""
    from ai_vmm.runtime import load as runtime_load

    return runtime_load(path)
