"""An OpenVINO IR (``.xml`` + ``.bin``) as an ai-vmm artifact, so that it deploys like any other.

No compiler frontend reads IR (it is already compiled for OpenVINO), so the deployment wraps it:
one ``openvino`` partition whose payload is the IR's two files, on the OpenVINO device asked for,
with the inference precision as the executor config. The signature is read from the model as
the runtime's own OpenVINO executor loads it (names, element types, shapes with dynamic axes),
so OpenVINO itself is only touched through ``ai_vmm.runtime``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ai_vmm.runtime.artifact import (
    Dim,
    Manifest,
    PartitionSpec,
    TensorSpec,
    is_artifact,
    sha256_file,
    write_artifact,
)
from ai_vmm.runtime.errors import ModelLoadError, VmmError
from ai_vmm.runtime.executors import create_executor

PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}


def wrap_ir(xml: Path, device: str, precision: str, out: Path, work: Path) -> Path:
    """Write (or reuse) an artifact at ``out`` running the IR ``xml`` on OpenVINO ``device``.

    Raises:
        ModelLoadError: OpenVINO cannot read the IR.
    """
    if is_artifact(out):
        return out
    config: dict[str, Any] = {
        "performance_hint": "LATENCY",
        "inference_precision": PRECISION_HINTS[precision],
    }
    try:
        executor = create_executor("openvino", xml, "CPU", {}, ())
    except VmmError as exc:
        raise ModelLoadError(f"{xml}: OpenVINO cannot read this IR: {exc}") from exc
    compiled = getattr(executor, "compiled_model", None)
    if compiled is None:
        raise ModelLoadError(f"{xml}: the OpenVINO executor does not expose its model")
    inputs = tuple(_spec(port, f"input{i}") for i, port in enumerate(compiled.inputs))
    outputs = tuple(_spec(port, f"output{i}") for i, port in enumerate(compiled.outputs))
    payload = work / "p0"
    payload.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(xml, payload / "model.xml")
    shutil.copyfile(xml.with_suffix(".bin"), payload / "model.bin")
    files = {f"p0/{name}": sha256_file(payload / name) for name in ("model.xml", "model.bin")}
    manifest = Manifest(
        inputs=inputs,
        outputs=outputs,
        partitions=(
            PartitionSpec(
                id="p0",
                target="openvino",
                device=device,
                entry="p0/model.xml",
                files=files,
                inputs=tuple(s.name for s in inputs),
                outputs=tuple(s.name for s in outputs),
                config=config,
            ),
        ),
        compile_options={"source": "openvino-ir", "precision": precision},
        toolchain={},
        source={"format": "openvino-ir", "sha256": files["p0/model.bin"]},
    )
    report = {"source": {"path": str(xml), "notes": ["OpenVINO IR wrapped as it is by deploy"]}}
    write_artifact(out, manifest, report, {"p0": payload})
    return out


def _spec(port: Any, fallback: str) -> TensorSpec:
    names = sorted(port.get_names())
    name = names[0] if names else fallback
    try:
        dtype = str(port.get_element_type().to_dtype())
    except Exception:  # an element type NumPy has no name for
        dtype = ""
    shape: list[Dim] = []
    partial = port.get_partial_shape()
    if partial.rank.is_dynamic:
        return TensorSpec(name, dtype, None)
    for axis, dim in enumerate(partial):
        if dim.is_static:
            shape.append(int(dim.get_length()))
        elif dim.get_max_length() > 0:
            shape.append({"min": int(dim.get_min_length()), "max": int(dim.get_max_length())})
        else:
            shape.append(f"{name}_{axis}")
    return TensorSpec(name, dtype, tuple(shape))
