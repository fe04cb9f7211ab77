"""OpenVINO target: Intel CPU / GPU / NPU through OpenVINO IR.

Capability comes from OpenVINO itself: the ONNX frontend's ``convert_partially`` keeps going past
nodes it cannot translate (they stay as framework nodes), then ``Core.query_model`` names the
operations the device supports. Codegen converts the model to IR (``.xml`` + ``.bin``, weights
kept in float32: ``save_model`` would otherwise compress them to fp16) and compiles the IR for the
device during the compile, so a payload that the device rejects never reaches an artifact.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx_ir as ir

from ai_vmm.runtime.devices import CpuInfo, Device, Inventory
from ai_vmm.runtime.errors import CompileError
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

NAME = "openvino"
MIN_OPSET = 7
_PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
_FRAMEWORK_NODE_TYPES = ("ONNXFrameworkNode", "FrameworkNode", "NotSupportedONNXNode")


class OpenVinoTarget(Target):
    """OpenVINO, one device per plugin device (CPU, GPU.0, NPU ...)."""

    name = NAME
    package = "openvino"
    min_opset = MIN_OPSET

    def discover(self, cpu: CpuInfo) -> tuple[list[Device], str | None, str | None]:
        import openvino as ov

        core = ov.Core()
        devices = []
        for name in core.available_devices:
            props: dict[str, Any] = {}
            for key in ("OPTIMIZATION_CAPABILITIES", "DEVICE_TYPE", "DEVICE_ARCHITECTURE"):
                try:
                    value = core.get_property(name, key)
                    props[key.lower()] = value if isinstance(value, list | int) else str(value)
                except Exception:  # a plugin that lacks the property: leave it out
                    continue
            try:
                full = str(core.get_property(name, "FULL_DEVICE_NAME"))
            except Exception:
                full = name
            kind = name.split(".")[0].lower()
            devices.append(
                Device(NAME, name, kind if kind in ("cpu", "gpu", "npu") else "other", full, props)
            )
        return devices, ov.get_version().split("-")[0], None

    def available(self, inventory: Inventory) -> list[Device]:
        return devices_of(NAME, inventory)

    def capability(self, model: ir.Model, device: Device) -> dict[str, NodeSupport]:
        import openvino as ov
        from openvino.frontend import FrontEndManager

        with tempfile.TemporaryDirectory(prefix="ai-vmm-ovcap-") as tmp:
            path = Path(tmp) / "model.onnx"
            save_onnx(model, path)
            frontend = FrontEndManager().load_by_framework("onnx")
            try:
                ov_model = frontend.convert_partially(frontend.load(str(path)))
            except Exception as exc:
                reason = _first_line(exc)
                return {
                    node.name or "": NodeSupport(False, f"OpenVINO cannot read the model: {reason}")
                    for node in model.graph
                }
            untranslated: set[str] = set()
            downstream: set[str] = set()
            ops_by_name: dict[str, Any] = {}
            for op in ov_model.get_ordered_ops():
                ops_by_name[op.get_friendly_name()] = op
                if op.get_type_name() in _FRAMEWORK_NODE_TYPES:
                    # "NotSupportedONNXNode" also marks nodes that failed only because an
                    # untranslated node upstream left their input without a shape; they get a
                    # second chance alone below.
                    names = {op.get_friendly_name()}
                    for output in op.outputs():
                        names.update(output.get_names())
                    if op.get_type_name() == "NotSupportedONNXNode":
                        downstream |= names
                    else:
                        untranslated |= names
            placed: set[str] | None = None
            if not (untranslated or downstream):
                placed = set(ov.Core().query_model(ov_model, device.name))
            # query_model on a model holding framework nodes is not safe (seen: a C++
            # "basic_string::_M_create" exception, and a segfault once the frontend had loaded
            # another model): such models keep the frontend's per-node verdict only.
            del ov_model
            if downstream:
                untranslated |= _fails_alone(model, downstream, Path(tmp))
        support: dict[str, NodeSupport] = {}
        for node in model.graph:
            keys = {node.name or ""} | {v.name for v in node.outputs if v.name}
            if keys & untranslated:
                support[node.name or ""] = NodeSupport(
                    False,
                    f"OpenVINO's ONNX frontend cannot translate {node.op_type}"
                    + (f" of domain '{node.domain}'" if node.domain else ""),
                )
            elif placed is not None and any(k in ops_by_name and k not in placed for k in keys):
                support[node.name or ""] = NodeSupport(
                    False, f"OpenVINO {device.name} plugin does not support {node.op_type}"
                )
            else:
                support[node.name or ""] = NodeSupport(True)
        return support

    def prepare(self, model: ir.Model, options: TargetOptions) -> ir.Model:
        """Expand the ops OpenVINO translates wrongly into their ONNX function bodies."""
        return lower_misread_ops(model)

    def supports_op(self, domain: str, op_type: str) -> bool:
        """Whether fusions may produce this op for OpenVINO: standard ONNX ops only.

        (OpenVINO 2026.4 runs some com.microsoft ops too, but their semantics are ONNX
        Runtime's; the contrib fusions stay on the onnxruntime target.)
        """
        return domain in ("", "ai.onnx")

    def tuning_space(
        self, device: Device, config: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        return [{"inference_num_threads": 1}] if device.kind == "cpu" else []

    def codegen(
        self, model: ir.Model, device: Device, options: TargetOptions, out_dir: Path
    ) -> Payload:
        import openvino as ov

        with tempfile.TemporaryDirectory(prefix="ai-vmm-ov-") as tmp:
            source = Path(tmp) / "model.onnx"
            save_onnx(model, source)
            ov_model = _convert(source)
            bounds = options.extra.get("input_bounds") or {}
            if bounds:
                ov_model.reshape(
                    {name: ov.PartialShape(_partial(dims)) for name, dims in bounds.items()}
                )
            _stable_names(ov_model, {node.name for node in model.graph if node.name})
            ov.save_model(ov_model, str(out_dir / "model.xml"), compress_to_fp16=False)
        config: dict[str, Any] = {
            "performance_hint": options.performance_hint,
            "inference_precision": _PRECISION_HINTS[options.precision],
        }
        if options.num_threads:
            config["inference_num_threads"] = options.num_threads
        self._check_compiles(out_dir / "model.xml", device, config)
        files = tuple(sorted(p.name for p in out_dir.iterdir()))
        return Payload(entry="model.xml", files=files, config=config)

    def quantize(
        self,
        model: ir.Model,
        device: Device,
        options: TargetOptions,
        request: QuantizationRequest,
        out_dir: Path,
    ) -> QuantizedPayload:
        """NNCF on the float IR (``targets/openvino_quant.py``); precision is a runtime hint."""
        import openvino as ov

        from ai_vmm.targets.openvino_quant import quantize_model, quantized_ops

        with tempfile.TemporaryDirectory(prefix="ai-vmm-ovq-") as tmp:
            float_options = replace(options, precision="fp32")
            self.codegen(model, device, float_options, Path(tmp))
            ov_model = ov.Core().read_model(str(Path(tmp) / "model.xml"))
            result = quantize_model(ov_model, request)
            ov.save_model(result.model, str(out_dir / "model.xml"), compress_to_fp16=False)
        config: dict[str, Any] = {
            "performance_hint": options.performance_hint,
            "inference_precision": _PRECISION_HINTS[request.precision],
        }
        if options.num_threads:
            config["inference_num_threads"] = options.num_threads
        self._check_compiles(out_dir / "model.xml", device, config)
        files = tuple(sorted(p.name for p in out_dir.iterdir()))
        return QuantizedPayload(
            payload=Payload(entry="model.xml", files=files, config=config),
            quantized=tuple(quantized_ops(result.model)),
            kept_float=result.kept_float,
            method=result.method,
            notes=tuple(result.notes),
        )

    @staticmethod
    def _check_compiles(xml: Path, device: Device, config: dict[str, Any]) -> None:
        import openvino as ov

        from ai_vmm.runtime.executors.openvino import compile_properties

        core = ov.Core()
        if device.name.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            return  # planning for hardware that is not here: the IR is device-portable
        try:
            core.compile_model(core.read_model(str(xml)), device.name, compile_properties(config))
        except Exception as exc:
            raise CompileError(
                f"OpenVINO could not compile the IR for {device.name}: {_first_line(exc)}"
            ) from exc


_AUTO_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*_\d+")


def _stable_names(ov_model: Any, onnx_names: set[str]) -> None:
    """Rename ops that carry OpenVINO's auto-generated names (``Transpose_7238``).

    Those numbers come from a process-wide counter, so the same model converted twice would give
    two different IR files; positions in the graph give the same names every time.
    """
    for position, op in enumerate(ov_model.get_ordered_ops()):
        if op.get_type_name() in ("Parameter", "Result"):
            continue
        name = op.get_friendly_name()
        if name not in onnx_names and _AUTO_NAME.fullmatch(name):
            op.set_friendly_name(f"vmm_{op.get_type_name()}_{position}")


_LOWERED_DOMAIN = "ai_vmm.lowered"


def misread_reason(node: ir.Node) -> str | None:
    """Why OpenVINO's ONNX frontend would compute ``node`` differently from ONNX, if it would.

    Measured with openvino 2026.4 on the ONNX node tests, against both ONNX Runtime and the op's
    own function body run by OpenVINO: ``Attention`` ignores ``left_window_size`` /
    ``right_window_size`` (errors up to 2.0), and gets causal attention over a KV cache with a
    mask wrong (up to 0.08).
    """
    if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
        return None

    def attr(name: str, default: int) -> int:
        value = node.attributes.get(name)
        return value.as_int() if value is not None else default

    if attr("left_window_size", -1) >= 0 or attr("right_window_size", -1) >= 0:
        return "Attention with a local window"
    present = [i < len(node.inputs) and node.inputs[i] is not None for i in range(5)]
    if attr("is_causal", 0) and present[3] and present[4]:
        return "causal Attention with a mask and a KV cache"
    return None


def lower_misread_ops(model: ir.Model) -> ir.Model:
    """A copy of ``model`` with each node ``misread_reason`` names replaced by its ONNX function
    body (what ``onnx`` defines the op as, in primitive ops OpenVINO translates correctly).

    ``model`` itself is not changed (other targets compile it too); it is returned as it is when
    nothing needs lowering.
    """
    if not any(misread_reason(node) for node in model.graph):
        return model
    model = model.clone()
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    lowered = 0
    for node in [n for n in model.graph if misread_reason(n)]:
        function = _function_body(node, opset, f"{node.op_type}_{lowered}")
        if function is None:
            continue
        model.functions[function.identifier()] = function
        node.domain, node.op_type = _LOWERED_DOMAIN, function.name
        for name in list(node.attributes):
            del node.attributes[name]
        lowered += 1
    if lowered:
        import onnx_ir.passes.common as common

        model.opset_imports[_LOWERED_DOMAIN] = 1
        common.InlinePass()(model)
        del model.opset_imports[_LOWERED_DOMAIN]
    return model


def _function_body(node: ir.Node, opset: int, name: str) -> ir.Function | None:
    """``node``'s op as a model-local function specialized to its attributes and input types."""
    import onnx

    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        known = schema.context_dependent_function_opset_versions  # type: ignore[attr-defined]
        versions = [v for v in known if v <= opset]
        if not versions:
            return None
        types = [
            ir.serde.serialize_value(v).type if v is not None else onnx.TypeProto()
            for v in node.inputs
        ]
        proto = onnx.FunctionProto()
        proto.ParseFromString(
            schema.get_context_dependent_function_with_opset_version(  # type: ignore[attr-defined]
                max(versions),
                ir.serde.serialize_node(node).SerializeToString(),
                [t.SerializeToString() for t in types],
            )
        )
    except Exception:  # no function body for this op/opset: leave the node to OpenVINO
        return None
    # The body computes only the outputs its inputs allow (no present_key without past_key):
    # keep the ones the node uses.
    produced = {output for body_node in proto.node for output in body_node.output}
    used = list(proto.output)[: len(node.outputs)]
    if not all(output in produced for output in used):
        return None
    del proto.output[:]
    proto.output.extend(used)
    del proto.attribute[:]  # the body is already specialized to the node's attributes
    proto.domain, proto.name = _LOWERED_DOMAIN, name
    return ir.serde.deserialize_function(proto)


def _convert(source: Path) -> Any:
    """The ONNX file as an ``openvino.Model``: ovc's conversion, else the plain frontend's.

    ``convert_model`` adds offline transformations to what ``Core.read_model`` does, and those
    can fail where the runtime itself succeeds (Col2Im with a runtime ``image_shape``: "to_shape
    was called on a dynamic shape"); the plugin applies its own transformations at compile time
    either way, so the plain conversion is a complete IR.
    """
    import openvino as ov

    try:
        return ov.convert_model(str(source))
    except Exception as exc:  # ovc re-raises the frontend's own exception types
        try:
            return ov.Core().read_model(str(source))
        except Exception:
            raise exc from None


def _fails_alone(model: ir.Model, names: set[str], tmp: Path) -> set[str]:
    """Of the nodes named in ``names``, those OpenVINO cannot translate even as a lone node."""
    import onnx
    import onnx.helper as oh
    from openvino.frontend import FrontEndManager

    proto = ir.serde.serialize_model(model)
    types = {v.name: v for v in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]}
    weights = {t.name: t for t in proto.graph.initializer}
    failing: set[str] = set()
    for node in proto.graph.node:
        keys = {node.name, *node.output}
        if not keys & names:
            continue
        feeds = [n for n in node.input if n and n not in weights]
        if any(n not in types for n in [*feeds, *node.output]):
            failing |= keys
            continue
        single = oh.make_model(
            oh.make_graph(
                [node],
                "single",
                [types[n] for n in feeds],
                [types[n] for n in node.output if n],
                [weights[n] for n in node.input if n in weights],
            ),
            opset_imports=list(proto.opset_import),
        )
        path = tmp / "single.onnx"
        onnx.save(single, path)
        frontend = FrontEndManager().load_by_framework("onnx")
        try:
            converted = frontend.convert_partially(frontend.load(str(path)))
        except Exception:
            failing |= keys
            continue
        if any(op.get_type_name() in _FRAMEWORK_NODE_TYPES for op in converted.get_ordered_ops()):
            failing |= keys
    return failing


def _partial(dims: list[Any]) -> list[Any]:
    """``[1, {"min": 1, "max": 128}, None]`` -> OpenVINO dimensions (ranges, -1 for dynamic)."""
    import openvino as ov

    out: list[Any] = []
    for dim in dims:
        if isinstance(dim, dict):
            out.append(ov.Dimension(int(dim.get("min", 0)), int(dim.get("max", -1))))
        elif isinstance(dim, int):
            out.append(dim)
        else:
            out.append(-1)
    return out


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # OpenVINO's messages start with a C++ source location; the useful line comes after it.
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [exc.__class__.__name__])[0][:300]
