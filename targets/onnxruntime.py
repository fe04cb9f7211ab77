"""ONNX Runtime target: the always-present reference.

Codegen writes an ONNX model that ONNX Runtime has already optimized offline for the chosen
provider (``SessionOptions.optimized_model_filepath``), so the deployment machine skips the graph
optimizations at load. Offline optimization stops at the EXTENDED level: the ALL level adds
layout transformations (NCHWc) that depend on the exact CPU, so those run at load time instead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from ai_vmm.runtime.devices import CpuInfo, Device, Inventory
from ai_vmm.targets.base import (
    NodeSupport,
    Payload,
    QuantizationRequest,
    QuantizedPayload,
    Target,
    TargetOptions,
    devices_of,
    save_onnx,
)

NAME = "onnxruntime"
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")
_CONTRIB_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc")
_DEVICE_PROVIDERS = {"CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider"}
MIN_OPSET = 7


class OnnxRuntimeTarget(Target):
    """ONNX Runtime, one device per execution provider we drive (CPU here)."""

    name = NAME
    package = "onnxruntime"
    raw_config = {"graph_optimization_level": "all"}  # noqa: RUF012
    min_opset = MIN_OPSET

    def discover(self, cpu: CpuInfo) -> tuple[list[Device], str | None, str | None]:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        devices = [
            Device(
                NAME,
                dev,
                "cpu" if dev == "CPU" else "gpu",
                _describe(dev, cpu),
                {"provider": provider},
            )
            for dev, provider in _DEVICE_PROVIDERS.items()
            if provider in providers
        ]
        return devices, str(ort.__version__), None

    def available(self, inventory: Inventory) -> list[Device]:
        return devices_of(NAME, inventory)

    def capability(self, model: ir.Model, device: Device) -> dict[str, NodeSupport]:
        opset = model.opset_imports.get("", 1)
        support: dict[str, NodeSupport] = {}
        for node in model.graph:
            domain = node.domain or ""
            if domain in _CONTRIB_DOMAINS:
                support[node.name or ""] = NodeSupport(True)
            elif domain not in _STANDARD_DOMAINS:
                support[node.name or ""] = NodeSupport(
                    False, f"ONNX Runtime has no kernels for domain '{domain}' ({node.op_type})"
                )
            elif not onnx.defs.has(node.op_type, domain):
                support[node.name or ""] = NodeSupport(
                    False, f"{node.op_type} is not an operator of domain '{domain or 'ai.onnx'}'"
                )
            else:
                version = model.opset_imports.get(domain, opset)
                try:
                    onnx.defs.get_schema(node.op_type, version, domain)
                    support[node.name or ""] = NodeSupport(True)
                except onnx.defs.SchemaError:
                    support[node.name or ""] = NodeSupport(
                        False, f"{node.op_type} does not exist at opset {version}"
                    )
        return support

    def prepare(self, model: ir.Model, options: TargetOptions) -> ir.Model:
        return model

    def quantize(
        self,
        model: ir.Model,
        device: Device,
        options: TargetOptions,
        request: QuantizationRequest,
        out_dir: Path,
    ) -> QuantizedPayload:
        """Q/DQ, dynamic, MatMulNBits or float16 (``targets/onnxruntime_quant.py``).

        The payload is not optimized offline: ONNX Runtime fuses Q/DQ pairs into integer
        kernels at load, for the CPU it finds there.
        """
        from ai_vmm.targets.onnxruntime_quant import float_nodes, quantize_onnx, weighted_nodes

        entry = out_dir / "model.onnx"
        with tempfile.TemporaryDirectory(prefix="ai-vmm-ortq-") as tmp:
            source = Path(tmp) / "source.onnx"
            save_onnx(model, source)
            result = quantize_onnx(source, entry, request, Path(tmp))
            candidates = weighted_nodes(onnx.load(str(source), load_external_data=False))
        still_float = float_nodes(onnx.load(str(entry), load_external_data=False))
        config: dict[str, Any] = {"graph_optimization_level": "all", "offline_optimized": False}
        if options.num_threads:
            config["intra_op_num_threads"] = options.num_threads
        files = tuple(sorted(p.name for p in out_dir.iterdir()))
        return QuantizedPayload(
            payload=Payload(entry=entry.name, files=files, config=config),
            quantized=tuple(n for n in candidates if n not in still_float),
            kept_float=result.kept_float,
            method=result.method,
            notes=tuple(result.notes),
        )

    def supports_op(self, domain: str, op_type: str) -> bool:
        """Whether fusions may produce this op for ONNX Runtime (standard and contrib ops)."""
        return domain in (*_STANDARD_DOMAINS, *_CONTRIB_DOMAINS)

    def tuning_space(
        self, device: Device, config: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        # One intra-op thread often wins for small models: no fork/join per op.
        return [{"intra_op_num_threads": 1}] if device.kind == "cpu" else []

    def codegen(
        self, model: ir.Model, device: Device, options: TargetOptions, out_dir: Path
    ) -> Payload:
        import onnxruntime as ort

        provider = _DEVICE_PROVIDERS.get(device.name, device.name)
        entry = out_dir / "model.onnx"
        config = {"graph_optimization_level": "all", "offline_optimized": True}
        if options.num_threads:
            config["intra_op_num_threads"] = options.num_threads
        with tempfile.TemporaryDirectory(prefix="ai-vmm-ort-") as tmp:
            source = Path(tmp) / "source.onnx"
            save_onnx(model, source)
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            so.optimized_model_filepath = str(entry)
            if source.with_name("source.onnx.data").exists():
                so.add_session_config_entry(
                    "session.optimized_model_external_initializers_file_name", "model.onnx.data"
                )
            try:
                ort.InferenceSession(str(source), sess_options=so, providers=[provider])
            except Exception as exc:
                # Offline optimization is an optimization: if ONNX Runtime cannot serialize its
                # optimized graph (some sequence/optional models), ship the model as it is and
                # let the session optimize it at load.
                if "optimized" not in str(exc).lower():
                    raise
                for stale in out_dir.iterdir():
                    stale.unlink()
                save_onnx(model, entry)
                config["offline_optimized"] = False
        files = tuple(sorted(p.name for p in out_dir.iterdir()))
        return Payload(entry=entry.name, files=files, config=config)


def _describe(device: str, cpu: CpuInfo) -> str:
    return cpu.model if device == "CPU" else device
