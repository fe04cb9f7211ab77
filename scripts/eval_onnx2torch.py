#!/usr/bin/env python
"""How far onnx2torch gets on the zoo models (the evaluation behind docs/gpu.md's table).

onnx2torch is not a dependency: install it beside the project without its dependencies, e.g.
``pip install --no-deps --target /tmp/o2t onnx2torch`` and run with ``PYTHONPATH=/tmp/o2t``.
It imports torchvision at import time (for nms / roi_align), which does not import beside our
CPU torch, so this script stubs ``torchvision.ops`` with functions that raise: no zoo model uses
those ops.

For each zoo model, as exported and as fused for the cuda target: convert, run on the CPU
against ONNX Runtime (batch 2, sequence 7), then ``torch.export`` with a dynamic batch.

Usage::

    PYTHONPATH=/tmp/o2t python scripts/eval_onnx2torch.py resnet transformer_encoder llama
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT = ("resnet", "transformer_encoder", "llama", "gpt2", "vit", "mobilenet", "dlrm")


def _import_onnx2torch() -> Any:
    """Import onnx2torch over a stubbed torchvision, then take the stub away again (other
    libraries look for torchvision and must not find a fake one)."""

    def absent(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision is stubbed for this evaluation")

    torchvision = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    for name in ("roi_align", "nms", "batched_nms", "roi_pool", "deform_conv2d"):
        setattr(ops, name, absent)
    torchvision.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = torchvision, ops
    try:
        import onnx2torch
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]
    return onnx2torch


def _fused(path: Path, out: Path) -> Path:
    """The model as the cuda target receives it: canonicalized and fused for it."""
    import onnx_ir as ir

    from ai_vmm.passes.analyze import analyze
    from ai_vmm.passes.canonicalize import canonicalize
    from ai_vmm.passes.recipes import apply_recipe, choose_recipe
    from ai_vmm.targets.cuda import CudaTarget

    model = ir.load(path)
    canonicalize(model, frozenset())
    apply_recipe(
        model,
        choose_recipe(analyze(model)),
        target="cuda",
        supported_ops=CudaTarget().supports_op,
        disabled=frozenset(),
        trace=False,
    )
    ir.save(model, out)
    return out


def evaluate(onnx2torch: Any, path: Path) -> str:
    import onnx
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path))
    feeds = {}
    for spec in session.get_inputs():
        shape = [
            d if isinstance(d, int) else (2 if i == 0 else 7) for i, d in enumerate(spec.shape)
        ]
        feeds[spec.name] = (
            np.ones(shape, np.int64)
            if "int64" in spec.type
            else np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        )
    try:
        module = onnx2torch.convert(onnx.load(str(path)))
        args = tuple(torch.from_numpy(feeds[s.name]) for s in session.get_inputs())
        out = module(*args)
        outs = out if isinstance(out, list | tuple) else [out]
        error = max(
            float(np.abs(want - got.detach().numpy()).max())
            for want, got in zip(session.run(None, feeds), outs, strict=True)
        )
    except Exception as exc:
        return f"not converted: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
    status = f"converted, max error {error:.1e}"
    try:
        torch.export.export(
            module,
            args,
            dynamic_shapes=tuple({0: torch.export.Dim.AUTO} for _ in args),
            strict=False,
        )
        return status + "; torch.export with a dynamic batch works"
    except Exception as exc:
        return status + f"; torch.export failed: {type(exc).__name__}"


def main(argv: list[str]) -> int:
    from importlib.metadata import version

    from ai_vmm.bench_suite import load_zoo

    zoo = load_zoo(REPO / "models" / "zoo.py")
    with tempfile.TemporaryDirectory(prefix="ai-vmm-o2t-") as tmp:
        work = Path(tmp)
        models = [(name, zoo.build(name, work)) for name in argv or DEFAULT]
        fused = [_fused(path, work / f"{name}_fused.onnx") for name, path in models]
        onnx2torch = _import_onnx2torch()
        print(f"onnx2torch {version('onnx2torch')}")
        print("| zoo model | as exported | as fused for the cuda target |")
        print("|---|---|---|")
        for (name, path), fused_path in zip(models, fused, strict=True):
            row = f"| {name} | {evaluate(onnx2torch, path)} | {evaluate(onnx2torch, fused_path)} |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
