"""ONNX -> torch op functions: convolution, pooling, normalization, activations, attention
and resizing (registered in ``OPS``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ai_vmm.targets.cuda_convert_base import (
    ConversionError,
    Node,
    as_tensor,
    axis_index,
    ints,
    onnx_op,
    scalar_of,
    torch_dtype,
    torch_pads,
)

__all__: list[str] = []


def _onnx_pads(node: Node, x: Any, kernel: list[int]) -> tuple[list[Any], list[Any]]:
    """The (begin, end) pads of the spatial axes from ``pads`` or ``auto_pad``.

    SAME pads depend on the input size only when a stride is above 1 (with stride 1 they are
    ``(kernel - 1) * dilation`` in all), so stride-1 SAME layers keep symbolic sizes symbolic.
    """
    spatial = len(kernel)
    strides = node.attr("strides") or [1] * spatial
    dilations = node.attr("dilations") or [1] * spatial
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for i in range(spatial):
            span = (kernel[i] - 1) * dilations[i] + 1
            if strides[i] == 1:
                total = span - 1
            else:
                size = x.shape[2 + i]
                out = -(-size // strides[i])
                total = max(0, (out - 1) * strides[i] + span - size)
            small, large = total // 2, total - total // 2
            begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
            pads_begin.append(begin)
            pads_end.append(end)
        return pads_begin, pads_end
    if auto_pad == "VALID":
        return [0] * spatial, [0] * spatial
    pads = node.attr("pads") or [0] * (2 * spatial)
    return list(pads[:spatial]), list(pads[spatial:])


def _conv_padding(node: Node, x: Any, kernel: list[int]) -> tuple[Any, list[int]]:
    """Apply ONNX padding (``pads``/``auto_pad``); return the input and symmetric padding."""
    pads_begin, pads_end = _onnx_pads(node, x, kernel)
    if pads_begin == pads_end:
        return x, pads_begin
    return F.pad(x, torch_pads(pads_begin, pads_end)), [0] * len(kernel)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@onnx_op("Conv")
def _conv(node: Node, device: torch.device, x: Any, w: Any, b: Any = None) -> Any:
    spatial = w.dim() - 2
    kernel = node.attr("kernel_shape") or list(w.shape[2:])
    x, padding = _conv_padding(node, x, kernel)
    return _CONV[spatial](
        x,
        w,
        b,
        stride=node.attr("strides") or 1,
        padding=padding,
        dilation=node.attr("dilations") or 1,
        groups=node.attr("group", 1),
    )


@onnx_op("ConvTranspose")
def _conv_transpose(node: Node, device: torch.device, x: Any, w: Any, b: Any = None) -> Any:
    spatial = w.dim() - 2
    pads = node.attr("pads") or [0] * (2 * spatial)
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or node.attr("output_shape"):
        raise ConversionError("ConvTranspose with auto_pad SAME or output_shape")
    if list(pads[:spatial]) != list(pads[spatial:]):
        raise ConversionError("ConvTranspose with asymmetric pads")
    return _CONV_T[spatial](
        x,
        w,
        b,
        stride=node.attr("strides") or 1,
        padding=list(pads[:spatial]),
        output_padding=node.attr("output_padding") or 0,
        groups=node.attr("group", 1),
        dilation=node.attr("dilations") or 1,
    )


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@onnx_op("MaxPool")
def _max_pool(node: Node, device: torch.device, x: Any) -> Any:
    kernel = list(node.attr("kernel_shape"))
    spatial = len(kernel)
    begin, end = _onnx_pads(node, x, kernel)
    padding = list(begin)
    if padding != list(end) or any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
        x = F.pad(x, torch_pads(begin, end), value=float("-inf"))
        padding = [0] * spatial
    return _MAX_POOL[spatial](
        x,
        kernel,
        stride=node.attr("strides") or 1,
        padding=padding,
        dilation=node.attr("dilations") or 1,
        ceil_mode=bool(node.attr("ceil_mode", 0)),
    )


@onnx_op("AveragePool")
def _avg_pool(node: Node, device: torch.device, x: Any) -> Any:
    kernel = list(node.attr("kernel_shape"))
    spatial = len(kernel)
    if any(d != 1 for d in node.attr("dilations") or []):
        raise ConversionError("AveragePool with dilations")
    begin, end = _onnx_pads(node, x, kernel)
    pads = [*begin, *end]
    padding = list(begin)
    if padding != list(end) or any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
        # torch pools take symmetric padding of at most half the kernel: pad explicitly.
        if node.attr("ceil_mode", 0):
            raise ConversionError("AveragePool with ceil_mode and asymmetric or large pads")
        flat = torch_pads(pads[:spatial], pads[spatial:])
        pool = _AVG_POOL[spatial]
        stride = node.attr("strides") or 1
        summed = pool(F.pad(x, flat), kernel, stride=stride)
        if node.attr("count_include_pad", 0):
            return summed
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        return summed / pool(F.pad(ones, flat), kernel, stride=stride)
    return _AVG_POOL[spatial](
        x,
        kernel,
        stride=node.attr("strides") or 1,
        padding=list(pads[:spatial]),
        ceil_mode=bool(node.attr("ceil_mode", 0)),
        count_include_pad=bool(node.attr("count_include_pad", 0)),
    )


@onnx_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node: Node, device: torch.device, x: Any) -> Any:
    dims = tuple(range(2, x.dim()))
    if node.op_type == "GlobalAveragePool":
        return x.mean(dim=dims, keepdim=True)
    return x.amax(dim=dims, keepdim=True)


@onnx_op("BatchNormalization")
def _batch_norm(
    node: Node, device: torch.device, x: Any, scale: Any, bias: Any, mean: Any, var: Any
) -> Any:
    eps = node.attr("epsilon", 1e-5)
    if x.dtype != mean.dtype:
        # Parameters kept float32 (the module's FLOAT32_KEPT): a running variance of 1e8
        # (PP-OCRv4's detector) is inf in float16. Computed in float32, cast back; Inductor
        # fuses the casts into the normalization.
        m32, v32, w32, b32 = (p.float() for p in (mean, var, scale, bias))
        return F.batch_norm(x.float(), m32, v32, w32, b32, False, 0.0, eps).to(x.dtype)
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


@onnx_op("InstanceNormalization")
def _instance_norm(node: Node, device: torch.device, x: Any, scale: Any, bias: Any) -> Any:
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.attr("epsilon", 1e-5))


@onnx_op("LayerNormalization")
def _layer_norm(node: Node, device: torch.device, x: Any, scale: Any, bias: Any = None) -> Any:
    axis = axis_index(node.attr("axis", -1), x.dim())
    shape = tuple(x.shape[axis:])
    eps = node.attr("epsilon", 1e-5)
    extra = len(node.outputs) > 1 and any(node.outputs[1:])
    if not extra and scale.dim() == len(shape) and (bias is None or bias.dim() == len(shape)):
        return F.layer_norm(x, shape, scale, bias, eps)
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(var + eps)
    out = (x - mean) * inv_std * scale
    out = out + bias if bias is not None else out
    if not extra:
        return out
    # Mean and InvStdDev have the stash type (float32 by default, ONNX's 1).
    stash = torch_dtype(node.attr("stash_type", 1), node.compute)
    return out, mean.to(stash), inv_std.to(stash)


@onnx_op("RMSNormalization")
def _rms_norm(node: Node, device: torch.device, x: Any, scale: Any) -> Any:
    axis = axis_index(node.attr("axis", -1), x.dim())
    shape = tuple(x.shape[axis:])
    eps = node.attr("epsilon", 1e-5)
    if scale.dim() == len(shape):
        return F.rms_norm(x, shape, scale, eps)
    dims = tuple(range(axis, x.dim()))
    return x * torch.rsqrt((x * x).mean(dim=dims, keepdim=True) + eps) * scale


@onnx_op("Softmax", "LogSoftmax")
def _softmax(node: Node, device: torch.device, x: Any) -> Any:
    fn = F.softmax if node.op_type == "Softmax" else F.log_softmax
    if node.opset >= 13:
        return fn(x, dim=node.attr("axis", -1))
    # Before opset 13 the input is read as 2-D: [prod(shape[:axis]), prod(shape[axis:])].
    axis = axis_index(node.attr("axis", 1), x.dim())
    if axis == x.dim() - 1:
        return fn(x, dim=-1)
    return fn(x.flatten(axis), dim=-1).reshape(x.shape)


_REDUCE = {
    "ReduceMean": torch.mean,
    "ReduceSum": torch.sum,
    "ReduceMax": torch.amax,
    "ReduceMin": torch.amin,
    "ReduceProd": None,
    "ReduceL2": None,
    "ReduceSumSquare": None,
    "ReduceLogSumExp": None,
    "ReduceL1": None,
    "ReduceLogSum": None,
}


@onnx_op(*_REDUCE, shape_aware=True)
def _reduce(node: Node, device: torch.device, x: Any, axes: Any = None) -> Any:
    x = as_tensor(x, device)
    dims = ints(axes, f"{node.op_type} axes") if axes is not None else list(node.attr("axes") or [])
    keep = bool(node.attr("keepdims", 1))
    if not dims:
        if node.attr("noop_with_empty_axes", 0):
            return x
        dims = list(range(x.dim()))
    dim = tuple(axis_index(d, x.dim()) for d in dims)
    name = node.op_type
    if name == "ReduceProd":
        out = x
        for d in sorted(dim, reverse=True):
            out = torch.prod(out, dim=d, keepdim=keep)
        return out
    if name == "ReduceL2":
        return torch.sqrt(torch.sum(x * x, dim=dim, keepdim=keep))
    if name == "ReduceSumSquare":
        return torch.sum(x * x, dim=dim, keepdim=keep)
    if name == "ReduceLogSumExp":
        return torch.logsumexp(x, dim=dim, keepdim=keep)
    if name == "ReduceL1":
        return torch.sum(torch.abs(x), dim=dim, keepdim=keep)
    if name == "ReduceLogSum":
        return torch.log(torch.sum(x, dim=dim, keepdim=keep))
    fn = _REDUCE[name]
    assert fn is not None
    return fn(x, dim=dim, keepdim=keep)


@onnx_op("ArgMax", "ArgMin")
def _argmax(node: Node, device: torch.device, x: Any) -> Any:
    fn = torch.argmax if node.op_type == "ArgMax" else torch.argmin
    dim = axis_index(node.attr("axis", 0), x.dim())
    keep = bool(node.attr("keepdims", 1))
    if node.attr("select_last_index", 0):
        return x.shape[dim] - 1 - fn(x.flip(dim), dim=dim, keepdim=keep)
    return fn(x, dim=dim, keepdim=keep)


@onnx_op("TopK", shape_aware=True)
def _topk(node: Node, device: torch.device, x: Any, k: Any) -> Any:
    values, indices = torch.topk(
        as_tensor(x, device),
        scalar_of(k, "TopK k"),
        dim=node.attr("axis", -1),
        largest=bool(node.attr("largest", 1)),
        sorted=bool(node.attr("sorted", 1)),
    )
    return values, indices


@onnx_op("Einsum")
def _einsum(node: Node, device: torch.device, *xs: Any) -> Any:
    return torch.einsum(node.attr("equation"), *xs)


@onnx_op("Gelu")
def _gelu(node: Node, device: torch.device, x: Any) -> Any:
    return F.gelu(x, approximate=node.attr("approximate", "none"))


@onnx_op("Clip", shape_aware=True)
def _clip(node: Node, device: torch.device, x: Any, low: Any = None, high: Any = None) -> Any:
    x = as_tensor(x, device)
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    low = as_tensor(low, device) if low is not None else None
    high = as_tensor(high, device) if high is not None else None
    if low is None and high is None:
        return x
    return torch.clamp(x, low, high)


@onnx_op("LeakyRelu")
def _leaky_relu(node: Node, device: torch.device, x: Any) -> Any:
    return F.leaky_relu(x, node.attr("alpha", 0.01))


@onnx_op("Elu")
def _elu(node: Node, device: torch.device, x: Any) -> Any:
    return F.elu(x, node.attr("alpha", 1.0))


@onnx_op("Selu")
def _selu(node: Node, device: torch.device, x: Any) -> Any:
    alpha, gamma = (
        node.attr("alpha", 1.67326319217681884765625),
        node.attr("gamma", 1.05070102214813232421875),
    )
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@onnx_op("HardSigmoid")
def _hard_sigmoid(node: Node, device: torch.device, x: Any) -> Any:
    return torch.clamp(node.attr("alpha", 0.2) * x + node.attr("beta", 0.5), 0.0, 1.0)


@onnx_op("HardSwish")
def _hard_swish(node: Node, device: torch.device, x: Any) -> Any:
    return F.hardswish(x)


@onnx_op("Softplus")
def _softplus(node: Node, device: torch.device, x: Any) -> Any:
    return F.softplus(x)


@onnx_op("Swish")
def _swish(node: Node, device: torch.device, x: Any) -> Any:
    return x * torch.sigmoid(node.attr("alpha", 1.0) * x)


@onnx_op("Celu")
def _celu(node: Node, device: torch.device, x: Any) -> Any:
    return F.celu(x, node.attr("alpha", 1.0))


@onnx_op("ThresholdedRelu")
def _thresholded_relu(node: Node, device: torch.device, x: Any) -> Any:
    return torch.where(x > node.attr("alpha", 1.0), x, torch.zeros_like(x))


@onnx_op("Shrink")
def _shrink(node: Node, device: torch.device, x: Any) -> Any:
    bias, lambd = node.attr("bias", 0.0), node.attr("lambd", 0.5)
    zero = torch.zeros_like(x)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero))


@onnx_op("GroupNormalization")
def _group_norm(node: Node, device: torch.device, x: Any, scale: Any, bias: Any) -> Any:
    groups = int(node.attr("num_groups"))
    channels = x.shape[1]
    if scale.numel() == groups and groups != channels:  # opset 18: one scale per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    eps = node.attr("epsilon", 1e-5)
    if x.dtype != torch.float32 and node.attr("stash_type", 1) == 1:
        out = F.group_norm(x.float(), groups, scale.float(), bias.float(), eps)
        return out.to(x.dtype)
    return F.group_norm(x, groups, scale, bias, eps)


@onnx_op("LpNormalization")
def _lp_norm(node: Node, device: torch.device, x: Any) -> Any:
    dim = axis_index(node.attr("axis", -1), x.dim())
    norm = torch.linalg.vector_norm(x, ord=node.attr("p", 2), dim=dim, keepdim=True)
    return torch.where(norm == 0, torch.zeros_like(x), x / norm)  # the reference's zero


@onnx_op("LRN")
def _lrn(node: Node, device: torch.device, x: Any) -> Any:
    """ONNX's window is [c - floor((size-1)/2), c + ceil((size-1)/2)]; ``F.local_response_norm``
    centres even sizes the other way, so the sum over channels is written out."""
    size = int(node.attr("size"))
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    squares = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
    before, after = (size - 1) // 2, size // 2
    window = F.avg_pool2d(F.pad(squares, (0, 0, before, after)), (size, 1), stride=1) * size
    return x / (bias + alpha / size * window.reshape(x.shape)) ** beta


@onnx_op("GridSample")
def _grid_sample(node: Node, device: torch.device, x: Any, grid: Any) -> Any:
    mode = {"linear": "bilinear", "cubic": "bicubic"}.get(node.attr("mode", "bilinear"))
    mode = mode or node.attr("mode", "bilinear")
    return F.grid_sample(
        x,
        grid.to(x.dtype),
        mode=mode,
        padding_mode=node.attr("padding_mode", "zeros"),
        align_corners=bool(node.attr("align_corners", 0)),
    )


@onnx_op("PRelu")
def _prelu(node: Node, device: torch.device, x: Any, slope: Any) -> Any:
    return torch.where(x < 0, x * slope, x)


@onnx_op("Attention")
def _attention(
    node: Node,
    device: torch.device,
    q: Any,
    k: Any,
    v: Any,
    mask: Any = None,
    past_key: Any = None,
    past_value: Any = None,
    nonpad: Any = None,
) -> Any:
    if nonpad is not None:
        raise ConversionError("Attention with nonpad_kv_seqlen")
    if node.attr("softcap", 0.0) or node.attr("qk_matmul_output_mode", 0):
        raise ConversionError("Attention with softcap or qk_matmul_output_mode")
    if node.attr("left_window_size", -1) not in (-1, None) or node.attr(
        "right_window_size", -1
    ) not in (-1, None):
        raise ConversionError("Attention with a sliding window")
    three_d = q.dim() == 3
    if three_d:
        qh, kvh = node.attr("q_num_heads"), node.attr("kv_num_heads")
        batch = q.shape[0]
        q = q.reshape(batch, q.shape[1], qh, -1).transpose(1, 2)
        k = k.reshape(batch, k.shape[1], kvh, -1).transpose(1, 2)
        v = v.reshape(batch, v.shape[1], kvh, -1).transpose(1, 2)
    if past_key is not None:
        k = torch.cat([past_key, k], dim=2)
        v = torch.cat([past_value, v], dim=2)
    is_causal = bool(node.attr("is_causal", 0))
    if is_causal and (mask is not None or past_key is not None):
        # Causal mask aligned after the past keys (top-left without a past, as ONNX does),
        # added to the user's mask.
        q_len, kv_len = q.shape[2], k.shape[2]
        offset = past_key.shape[2] if past_key is not None else 0
        rows = torch.arange(q_len, device=q.device).unsqueeze(1) + offset
        allowed = torch.arange(kv_len, device=q.device).unsqueeze(0) <= rows
        causal = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~allowed, float("-inf")
        )
        if mask is None:
            mask = causal
        elif mask.dtype == torch.bool:
            mask = mask & allowed
        else:
            mask = mask + causal
        is_causal = False
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        is_causal=is_causal,
        scale=node.attr("scale"),
        enable_gqa=q.shape[1] != k.shape[1],
    )
    if three_d:
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    if len(node.outputs) > 1:
        return (out, k, v)[: len(node.outputs)]
    return out


@onnx_op("RotaryEmbedding")
def _rotary(
    node: Node,
    device: torch.device,
    x: Any,
    cos: Any,
    sin: Any,
    position_ids: Any = None,
) -> Any:
    interleaved = bool(node.attr("interleaved", 0))
    four_d = x.dim() == 4
    original = x.shape
    if four_d:
        x = x.transpose(1, 2)  # [B, S, H, D]
    else:
        heads = node.attr("num_heads")
        if not heads:
            raise ConversionError("RotaryEmbedding on 3-D input without num_heads")
        x = x.reshape(x.shape[0], x.shape[1], heads, -1)
    dim = node.attr("rotary_embedding_dim", 0) or x.shape[-1]
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    rotate, keep = x[..., :dim], x[..., dim:]
    if interleaved:
        x1, x2 = rotate[..., 0::2], rotate[..., 1::2]
    else:
        x1, x2 = rotate[..., : dim // 2], rotate[..., dim // 2 :]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rotated = torch.stack([real, imag], dim=-1).reshape(rotate.shape)
    else:
        rotated = torch.cat([real, imag], dim=-1)
    out = torch.cat([rotated, keep], dim=-1)
    return out.transpose(1, 2) if four_d else out.reshape(original)
