"""TensorRT target: NVIDIA GPUs through a serialized TensorRT engine.

Not verified in our environment: TensorRT cannot be installed on our dev or GPU machines, so
this is written against the TensorRT 10 Python API documentation and its TensorRT tests skip
here (``docs/tensorrt.md``). The pure parts (profiles, precision flags, the engine check, the
capability mapping) are tested everywhere; GPU listing and device memory ran on an H100.

- ``discover``: active only where ``tensorrt`` (10 or newer) imports; one device per CUDA GPU,
  named by its CUDA index (``tensorrt:0``), listed through cuda-python or NVML.
- ``capability``: TensorRT's own ONNX parser (``supports_model_v2``; ``supports_model`` before
  10.1): nodes outside every parsed subgraph are unsupported, with the parser's error for them.
  Where the parser cannot answer (no TensorRT, no GPU), a static list: the operators that
  onnx-tensorrt's ``docs/operators.md`` marks supported for TensorRT 10.15.
- ``codegen``: the ONNX parser fills a network, the builder config takes the precision flags,
  one optimization profile for the dynamic inputs (:func:`optimization_profiles`), a workspace
  limit and a timing cache kept across compiles; ``build_serialized_network`` writes
  ``model.engine`` and ``engine.json`` records what the engine needs at load (TensorRT version,
  GPU, compute capability), which the executor checks before deserializing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from ai_vmm.runtime.devices import CpuInfo, Device, Inventory
from ai_vmm.runtime.errors import CompileError
from ai_vmm.runtime.executors.tensorrt import (
    ENGINE_INFO,
    ENGINE_INFO_FORMAT,
    MIN_TENSORRT_MAJOR,
    CudaGpu,
    cuda_gpus,
    set_current_device,
)
from ai_vmm.targets.base import (
    NodeSupport,
    Payload,
    Target,
    TargetOptions,
    devices_of,
    save_onnx,
)

NAME = "tensorrt"
MIN_OPSET = 9
"""TensorRT 10's ONNX parser reads opsets 9 to 24 (10.15's ``docs/operators.md``)."""
ENGINE = "model.engine"
LEADING_DIM = 1
OTHER_DIM = 16
"""The sizes the compiler's synthetic inputs give dynamic axes (``ai_vmm.inputs``): the
profile's ``opt`` shape, so the sample the compile verifies with is the shape tuned for."""
MAX_FACTOR = 4
"""An unbounded dynamic axis gets ``max = MAX_FACTOR * opt`` (bound it with ``--input``)."""
DEFAULT_WORKSPACE_BYTES = 4 << 30
"""Builder workspace limit: 4 GiB, at most half the GPU's memory
(``options.extra["tensorrt_workspace_bytes"]`` overrides)."""

_STANDARD_DOMAINS = ("", "ai.onnx")

_SUPPORTED_OPS_TEXT = """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
    ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear
    Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax
    Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan
    Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
"""
SUPPORTED_OPS = frozenset(_SUPPORTED_OPS_TEXT.split())
"""ONNX operators marked supported for TensorRT 10.15 in onnx-tensorrt's ``docs/operators.md``
(with restrictions this list does not check): the capability answer when the parser cannot be
asked (see :data:`LATE_OPS` for the ones older TensorRT 10 releases lack)."""

LATE_OPS: dict[str, tuple[int, int]] = {
    "Attention": (10, 14),
    "RMSNormalization": (10, 15),
    "RotaryEmbedding": (10, 15),
    "TensorScatter": (10, 15),
}
"""Operators the ONNX parser reads only from a recent TensorRT on (onnx-tensorrt's changelog):
fusions produce them only for a TensorRT at least that new."""

Dim = int | str | None
"""A model input dimension: a size, a symbol, or unknown."""
Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""``(min, opt, max)`` shapes of one input."""


@dataclass(frozen=True)
class PrecisionFlags:
    """Builder flags to set and to clear for a precision (names of ``trt.BuilderFlag``)."""

    enable: tuple[str, ...]
    disable: tuple[str, ...]


_PRECISION_FLAGS: dict[str, tuple[str, ...]] = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",)}


def precision_flags(precision: str, available: Collection[str]) -> PrecisionFlags:
    """The builder flags for ``--precision`` given the ``trt.BuilderFlag`` names this TensorRT has.

    - ``fp32``: no reduced-precision flag, and TF32 cleared (TensorRT enables TF32 by default,
      which rounds matmul/conv inputs to 10 mantissa bits: fp32 here means results comparable
      with the float reference).
    - ``fp16`` / ``bf16``: ``FP16`` / ``BF16`` (weak typing: TensorRT may choose fp16/bf16
      kernels per layer; inputs and outputs stay as the model declares them).

    TensorRT 11 removed those flags (strongly typed networks only): asking for fp16/bf16 there
    is a ``CompileError`` that says so.
    """
    if precision not in _PRECISION_FLAGS:
        raise CompileError(f"TensorRT target: unknown precision '{precision}' (fp32, fp16 or bf16)")
    wanted = _PRECISION_FLAGS[precision]
    missing = [flag for flag in wanted if flag not in available]
    if missing:
        raise CompileError(
            f"this TensorRT has no BuilderFlag.{missing[0]} (TensorRT 11 removed the weak-typing "
            f"precision flags): compile with --precision fp32, or give a model already "
            f"converted to {precision}"
        )
    disable = ("TF32",) if precision == "fp32" and "TF32" in available else ()
    return PrecisionFlags(enable=wanted, disable=disable)


def _default_size(axis: int) -> int:
    return LEADING_DIM if axis == 0 else OTHER_DIM


def _bound(entry: Any) -> tuple[int, int | None] | None:
    """``(low, high)`` from a ``--input`` range entry (``{"min": a, "max": b}``), else None."""
    if not isinstance(entry, Mapping):
        return None
    low = max(int(entry.get("min", 1)), 1)
    high = entry.get("max")
    return low, (int(high) if high is not None and int(high) >= 0 else None)


def optimization_profiles(
    inputs: Sequence[tuple[str, Sequence[Dim] | None]],
    bounds: Mapping[str, Sequence[Any]] | None = None,
    max_factor: int = MAX_FACTOR,
) -> dict[str, Profile]:
    """One optimization profile's ``(min, opt, max)`` shape for each input with a dynamic axis.

    ``inputs`` gives each input's dimensions (a size, a symbol name, or ``None``); ``bounds``
    is the driver's ``TargetOptions.extra["input_bounds"]``: per bounded input, one entry per
    axis, ``{"min": a, "max": b}`` (``max`` optional) for a ``--input`` range. Per dynamic axis:

    - ``min``: the range's lower bound, else 1 (a zero lower bound becomes 1);
    - ``opt``: the size the compiler's synthetic sample uses (1 for axis 0, 16 for other
      axes), clipped into the range;
    - ``max``: the range's upper bound, else ``max_factor * opt`` (at least ``min``).

    Axes that share a symbol share one range (their bounds intersected) and one ``opt``, taken,
    as for the synthetic inputs, from the axis where the symbol first appears. Static inputs
    need no profile and are left out. ``CompileError`` for an input of unknown rank or a range
    that intersects to nothing.
    """
    bounds = bounds or {}
    ranges: dict[Any, tuple[int, int | None]] = {}
    defaults: dict[Any, int] = {}
    keyed: list[tuple[str, list[Any]]] = []
    for name, dims in inputs:
        if dims is None:
            raise CompileError(
                f"input '{name}' has no known rank: a TensorRT optimization profile needs one "
                f"(give it with --input {name}[...])"
            )
        entries = list(bounds.get(name) or [])
        if len(entries) != len(dims):
            entries = [None] * len(dims)
        keys: list[Any] = []
        for axis, (dim, entry) in enumerate(zip(dims, entries, strict=True)):
            if isinstance(dim, int) and dim >= 0:
                keys.append(dim)
                continue
            key = ("symbol", dim) if isinstance(dim, str) and dim else ("axis", name, axis)
            defaults.setdefault(key, _default_size(axis))
            bound = _bound(entry)
            if bound is not None:
                old = ranges.get(key)
                if old is not None:
                    highs = [h for h in (old[1], bound[1]) if h is not None]
                    bound = (max(old[0], bound[0]), min(highs) if highs else None)
                ranges[key] = bound
            keys.append(key)
        keyed.append((name, keys))
    resolved: dict[Any, tuple[int, int, int]] = {}
    for key, default in defaults.items():
        low, high = ranges.get(key, (1, None))
        if high is not None and high < low:
            raise CompileError(
                f"the --input ranges of dimension {key[1]} do not overlap ({low} > {high})"
            )
        opt = max(low, min(default, high) if high is not None else default)
        resolved[key] = (low, opt, high if high is not None else max(opt * max_factor, low))
    profiles: dict[str, Profile] = {}
    for name, keys in keyed:
        if all(isinstance(k, int) for k in keys):
            continue
        triples = [(k, k, k) if isinstance(k, int) else resolved[k] for k in keys]
        profiles[name] = (
            tuple(t[0] for t in triples),
            tuple(t[1] for t in triples),
            tuple(t[2] for t in triples),
        )
    return profiles


def parser_capability(
    node_names: Sequence[str],
    covered: Iterable[int] | None,
    errors: Sequence[tuple[int, str]],
) -> dict[str, NodeSupport]:
    """Per-node support from the ONNX parser's answer.

    ``covered`` holds the indices (in graph order) of the nodes inside the parser's subgraphs,
    or is ``None`` when the parser supports the whole model; ``errors`` holds the parser's
    errors as ``(node index, description)``, index -1 for errors not tied to a node (an input
    it cannot take). A node outside every subgraph, or with an error of its own, is unsupported
    with that error as its reason.
    """
    by_node: dict[int, str] = {}
    general = ""
    for index, text in errors:
        if index >= 0:
            by_node.setdefault(index, text)
        elif not general:
            general = text
    inside = set(range(len(node_names))) if covered is None else set(covered)
    support: dict[str, NodeSupport] = {}
    for index, name in enumerate(node_names):
        if index in by_node:
            support[name] = NodeSupport(False, f"TensorRT's ONNX parser: {by_node[index]}")
        elif index not in inside:
            reason = (
                f"TensorRT cannot take one of its inputs: {general}"
                if general
                else "TensorRT's ONNX parser left it out of every supported subgraph"
            )
            support[name] = NodeSupport(False, reason)
        else:
            support[name] = NodeSupport(True)
    return support


def static_capability(model: ir.Model, why: str = "") -> dict[str, NodeSupport]:
    """Per-node support from :data:`SUPPORTED_OPS` (the answer when the parser cannot be asked)."""
    suffix = f" (static list of TensorRT 10.15's ONNX operators; {why})" if why else ""
    support: dict[str, NodeSupport] = {}
    for node in model.graph:
        domain = node.domain or ""
        if domain not in _STANDARD_DOMAINS:
            reason = f"TensorRT runs no ops of domain '{domain}' ({node.op_type}) without a plugin"
            support[node.name or ""] = NodeSupport(False, reason + suffix)
        elif node.op_type not in SUPPORTED_OPS:
            reason = f"{node.op_type} is not among TensorRT's supported ONNX operators"
            support[node.name or ""] = NodeSupport(False, reason + suffix)
        else:
            support[node.name or ""] = NodeSupport(True)
    return support


def timing_cache_path(
    extra: Mapping[str, Any],
    env: Mapping[str, str],
    tensorrt_version: str,
    compute_capability: str,
) -> Path | None:
    """Where the builder's timing cache lives (``None``: no cache).

    ``extra["tensorrt_timing_cache"]`` names a file (``""`` or ``False`` turns the cache off);
    otherwise ``$AI_VMM_CACHE_DIR/tensorrt/`` or ``~/.cache/ai-vmm/tensorrt/``, one file per
    TensorRT version and compute capability (a timing cache is only valid for those).
    """
    explicit = extra.get("tensorrt_timing_cache")
    if explicit is False or explicit == "":
        return None
    if explicit:
        return Path(str(explicit))
    root = env.get("AI_VMM_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "ai-vmm"
    sm = compute_capability.replace(".", "")
    return base / "tensorrt" / f"timing-{tensorrt_version}-sm{sm}.cache"


def workspace_bytes(extra: Mapping[str, Any], gpu_memory_bytes: int) -> int:
    """The builder's workspace pool limit (see :data:`DEFAULT_WORKSPACE_BYTES`)."""
    if extra.get("tensorrt_workspace_bytes"):
        return int(extra["tensorrt_workspace_bytes"])
    half = gpu_memory_bytes // 2 if gpu_memory_bytes > 0 else DEFAULT_WORKSPACE_BYTES
    return min(DEFAULT_WORKSPACE_BYTES, half)


def engine_info(
    *,
    tensorrt_version: str,
    gpu: CudaGpu,
    precision: str,
    flags: PrecisionFlags,
    profiles: Mapping[str, Profile],
    workspace: int,
) -> dict[str, Any]:
    """The ``engine.json`` document: what the engine needs at load and how it was built."""
    return {
        "format": ENGINE_INFO_FORMAT,
        "tensorrt": tensorrt_version,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "precision": precision,
        "builder_flags": {"set": list(flags.enable), "cleared": list(flags.disable)},
        "workspace_bytes": workspace,
        "profiles": {
            name: {"min": list(low), "opt": list(opt), "max": list(high)}
            for name, (low, opt, high) in sorted(profiles.items())
        },
    }


def _tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise CompileError(f"tensorrt not importable: {_one_line(exc)}") from exc
    return trt


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def _installed_version() -> tuple[int, ...]:
    """The importable TensorRT's ``(major, minor)``, ``(0,)`` when there is none."""
    try:
        import tensorrt as trt
    except Exception:
        return (0,)
    parts = str(getattr(trt, "__version__", "0")).split(".")[:2]
    return tuple(int(p) if p.isdigit() else 0 for p in parts)


def _logger(trt: Any) -> Any:
    """A TensorRT logger that keeps errors (for the CompileError) and prints nothing."""

    class Collecting(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(" ".join(str(msg).split()))

    return Collecting()


def _parser_errors(parser: Any) -> list[tuple[int, str]]:
    found = []
    for i in range(int(parser.num_errors)):
        error = parser.get_error(i)
        text = " ".join(str(error.desc()).split())
        found.append((int(error.node()), f"{error.code()}: {text}"))
    return found


def _gpu(device: Device) -> CudaGpu:
    gpus, note = cuda_gpus()
    for gpu in gpus:
        if str(gpu.index) == device.name:
            return gpu
    raise CompileError(
        f"CUDA GPU {device.name} is not present here ({note or f'{len(gpus)} GPUs found'})"
    )


def _activate(index: int) -> None:
    """Make GPU ``index`` current for this thread (the builder builds on the current GPU)."""
    try:
        set_current_device(index)
    except ImportError as exc:
        if index != 0:
            raise CompileError(
                f"building for CUDA GPU {index} needs cuda-python to select it: {_one_line(exc)}"
            ) from exc
    except RuntimeError as exc:
        raise CompileError(f"cannot use CUDA GPU {index}: {_one_line(exc)}") from exc


def _network_inputs(network: Any, model: ir.Model) -> list[tuple[str, tuple[Dim, ...]]]:
    """The network's inputs with their dims: TensorRT's sizes, the model's symbols for -1."""
    model_dims: dict[str, list[Dim]] = {}
    for value in model.graph.inputs:
        if value.shape is not None:
            model_dims[value.name or ""] = [
                d if isinstance(d, int) else (d.value or None) for d in value.shape
            ]
    found: list[tuple[str, tuple[Dim, ...]]] = []
    for i in range(int(network.num_inputs)):
        tensor = network.get_input(i)
        if tensor.is_shape_tensor:
            raise CompileError(
                f"input '{tensor.name}' is a shape tensor for TensorRT, which this target does "
                "not profile yet (fix its value with --input or a constant)"
            )
        shape = [int(d) for d in tensor.shape]
        symbols = model_dims.get(tensor.name)
        if symbols is None or len(symbols) != len(shape):
            symbols = [None] * len(shape)
        found.append(
            (
                tensor.name,
                tuple(
                    d if d >= 0 else symbols[a] if isinstance(symbols[a], str) else None
                    for a, d in enumerate(shape)
                ),
            )
        )
    return found


def _read_cache(path: Path | None) -> bytes:
    if path is None:
        return b""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _write_cache(path: Path | None, data: bytes) -> None:
    """Replace the timing cache atomically; a cache that cannot be written is skipped."""
    if path is None or not data:
        return
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


class TensorRtTarget(Target):
    """TensorRT, one device per CUDA GPU (``tensorrt:0``, ``tensorrt:1`` ...)."""

    name = NAME
    package = "tensorrt"
    min_opset = MIN_OPSET

    def discover(self, cpu: CpuInfo) -> tuple[list[Device], str | None, str | None]:
        try:
            import tensorrt as trt
        except Exception as exc:  # ImportError, or a broken install's own error
            return [], None, f"tensorrt not importable: {_one_line(exc)}"
        version = str(getattr(trt, "__version__", "unknown"))
        if _major(version) < MIN_TENSORRT_MAJOR:
            return [], version, f"TensorRT {version} is older than 10, which this target needs"
        gpus, note = cuda_gpus()
        if not gpus:
            return [], version, f"TensorRT {version} imports, but no CUDA GPU was found: {note}"
        devices = [
            Device(
                NAME,
                str(gpu.index),
                "gpu",
                gpu.name,
                {"compute_capability": gpu.compute_capability, "memory_bytes": gpu.memory_bytes},
            )
            for gpu in gpus
        ]
        return devices, version, None

    def available(self, inventory: Inventory) -> list[Device]:
        return devices_of(NAME, inventory)

    def capability(self, model: ir.Model, device: Device) -> dict[str, NodeSupport]:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        if opset < MIN_OPSET:
            reason = f"opset {opset} is older than TensorRT's ONNX parser reads ({MIN_OPSET}+)"
            return {node.name or "": NodeSupport(False, reason) for node in model.graph}
        try:
            trt = _tensorrt()
        except CompileError as exc:
            return static_capability(model, str(exc))
        try:
            return self._ask_parser(trt, model, device)
        except Exception as exc:  # no GPU, a driver error: the static list still answers
            return static_capability(model, f"the ONNX parser could not answer: {_one_line(exc)}")

    @staticmethod
    def _ask_parser(trt: Any, model: ir.Model, device: Device) -> dict[str, NodeSupport]:
        if device.name.isdigit():
            _activate(int(device.name))
        logger = _logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        with tempfile.TemporaryDirectory(prefix="ai-vmm-trtcap-") as tmp:
            path = Path(tmp) / "model.onnx"
            save_onnx(model, path)
            data = path.read_bytes()
            if hasattr(parser, "supports_model_v2"):  # TensorRT 10.1+
                whole = bool(parser.supports_model_v2(data, str(path)))
                subgraphs = [
                    [int(i) for i in parser.get_subgraph_nodes(k)]
                    for k in range(int(parser.num_subgraphs))
                ]
            else:
                whole, collection = parser.supports_model(data, str(path))
                subgraphs = [[int(i) for i in nodes] for nodes, _ in collection]
            errors = _parser_errors(parser)
        covered = None if whole else {i for nodes in subgraphs for i in nodes}
        return parser_capability([n.name or "" for n in model.graph], covered, errors)

    def prepare(self, model: ir.Model, options: TargetOptions) -> ir.Model:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        if opset < MIN_OPSET:
            raise CompileError(
                f"TensorRT's ONNX parser reads opset {MIN_OPSET} and newer; the model has {opset}"
            )
        return model

    def codegen(
        self, model: ir.Model, device: Device, options: TargetOptions, out_dir: Path
    ) -> Payload:
        trt = _tensorrt()
        version = str(trt.__version__)
        flags = precision_flags(options.precision, set(trt.BuilderFlag.__members__))
        gpu = _gpu(device)
        _activate(gpu.index)
        logger = _logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        with tempfile.TemporaryDirectory(prefix="ai-vmm-trt-") as tmp:
            source = Path(tmp) / "model.onnx"
            save_onnx(model, source)
            if not parser.parse_from_file(str(source)):
                errors = _parser_errors(parser) or [(-1, "no error reported")]
                more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
                raise CompileError(
                    f"TensorRT's ONNX parser rejected the model: {errors[0][1]}{more}"
                )
        profiles = optimization_profiles(
            _network_inputs(network, model), options.extra.get("input_bounds") or {}
        )
        config = builder.create_builder_config()
        workspace = workspace_bytes(options.extra, gpu.memory_bytes)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        for flag in flags.enable:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        for flag in flags.disable:
            config.clear_flag(getattr(trt.BuilderFlag, flag))
        if profiles:
            profile = builder.create_optimization_profile()
            for name, (low, opt, high) in profiles.items():
                profile.set_shape(name, low, opt, high)
            config.add_optimization_profile(profile)
        cache_path = timing_cache_path(options.extra, os.environ, version, gpu.compute_capability)
        cache = config.create_timing_cache(_read_cache(cache_path))
        if cache is None or not config.set_timing_cache(cache, False):
            cache = config.create_timing_cache(b"")  # stale or foreign: start an empty one
            config.set_timing_cache(cache, False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            detail = logger.errors[-1] if logger.errors else "see TensorRT's log"
            raise CompileError(f"TensorRT could not build an engine for {device.key}: {detail}")
        with open(out_dir / ENGINE, "wb") as handle:
            handle.write(serialized)
        _write_cache(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
        info = engine_info(
            tensorrt_version=version,
            gpu=gpu,
            precision=options.precision,
            flags=flags,
            profiles=profiles,
            workspace=workspace,
        )
        (out_dir / ENGINE_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        files = tuple(sorted(p.name for p in out_dir.iterdir()))
        return Payload(entry=ENGINE, files=files, config={"precision": options.precision})

    def supports_op(self, domain: str, op_type: str) -> bool:
        """Whether fusions may produce this op for TensorRT: standard ONNX ops of
        :data:`SUPPORTED_OPS` (no contrib ops); :data:`LATE_OPS` only where the installed
        TensorRT reads them."""
        if domain not in _STANDARD_DOMAINS or op_type not in SUPPORTED_OPS:
            return False
        return op_type not in LATE_OPS or _installed_version() >= LATE_OPS[op_type]

    def tuning_space(
        self, device: Device, config: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        return []
