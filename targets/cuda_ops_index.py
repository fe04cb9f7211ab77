"""ONNX -> torch op functions: indexing, data movement and integer ops (OneHot,
ScatterElements, ScatterND, DepthToSpace, SpaceToDepth, EyeLike, CumProd, bitwise ops),
registered in ``OPS``."""

from __future__ import annotations

import math
from typing import Any

import torch

from ai_vmm.targets.cuda_convert_base import (
    ConversionError,
    Node,
    as_tensor,
    axis_index,
    onnx_op,
    scalar_of,
    torch_dtype,
)

__all__: list[str] = []

_BITWISE = {
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}


@onnx_op(*_BITWISE)
def _bitwise(node: Node, device: torch.device, a: Any, b: Any) -> Any:
    return _BITWISE[node.op_type](a, b)


@onnx_op("BitwiseNot")
def _bitwise_not(node: Node, device: torch.device, x: Any) -> Any:
    return torch.bitwise_not(x)


@onnx_op("IsInf")
def _is_inf(node: Node, device: torch.device, x: Any) -> Any:
    positive = torch.isposinf(x)
    if not node.attr("detect_positive", 1):
        positive = torch.zeros_like(x, dtype=torch.bool)
    if node.attr("detect_negative", 1):
        return positive | torch.isneginf(x)
    return positive


@onnx_op("CumProd", shape_aware=True)
def _cumprod(node: Node, device: torch.device, x: Any, axis: Any) -> Any:
    x = as_tensor(x, device)
    dim = axis_index(scalar_of(axis, "CumProd axis"), x.dim())
    reverse = bool(node.attr("reverse", 0))
    if reverse:
        x = x.flip(dim)
    if node.attr("exclusive", 0):  # shift by one along the axis, starting from 1
        ones = torch.ones_like(x.narrow(dim, 0, 1))
        x = torch.cat([ones, x.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)
    out = torch.cumprod(x, dim=dim)
    return out.flip(dim) if reverse else out


@onnx_op("EyeLike")
def _eye_like(node: Node, device: torch.device, x: Any) -> Any:
    dtype = node.attr("dtype")
    out_dtype = torch_dtype(dtype, node.compute) if dtype is not None else x.dtype
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    cols = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    return (cols - rows == node.attr("k", 0)).to(out_dtype)


@onnx_op("OneHot", shape_aware=True)
def _one_hot(node: Node, device: torch.device, indices: Any, depth: Any, values: Any) -> Any:
    indices = as_tensor(indices, device)
    size = scalar_of(depth, "OneHot depth")
    if not isinstance(size, int):
        size = int(size)
    values = as_tensor(values, device)
    axis = node.attr("axis", -1)
    rank = indices.dim() + 1
    axis = axis + rank if axis < 0 else axis
    index = indices.to(torch.int64)
    index = torch.where(index < 0, index + size, index)
    classes = torch.arange(size, device=index.device)
    shape = [1] * rank
    shape[axis] = size
    hot = index.unsqueeze(axis) == classes.reshape(shape)
    return torch.where(hot, values[1], values[0])


_REDUCTIONS = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@onnx_op("ScatterElements", "Scatter")
def _scatter_elements(
    node: Node, device: torch.device, data: Any, indices: Any, updates: Any
) -> Any:
    dim = axis_index(node.attr("axis", 0), data.dim())
    index = torch.where(indices < 0, indices + data.shape[dim], indices).to(torch.int64)
    reduction = node.attr("reduction", "none")
    if reduction == "none":
        return data.scatter(dim, index, updates)
    return data.scatter_reduce(dim, index, updates, _REDUCTIONS[reduction], include_self=True)


@onnx_op("ScatterND")
def _scatter_nd(node: Node, device: torch.device, data: Any, indices: Any, updates: Any) -> Any:
    """Rows of ``indices`` address the first k axes of ``data``: flattened to one axis, the
    update is a scatter along it."""
    k = indices.shape[-1]
    if not isinstance(k, int):
        raise ConversionError("ScatterND with a symbolic index depth")
    lead = list(data.shape[:k])
    rest = list(data.shape[k:])
    flat = data.reshape([math.prod(lead) if all(isinstance(d, int) for d in lead) else -1, *rest])
    index = indices.to(torch.int64)
    index = torch.where(index < 0, index + torch.tensor(lead, device=index.device), index)
    strides = [1] * k
    for i in range(k - 2, -1, -1):
        strides[i] = strides[i + 1] * lead[i + 1]
    linear = (index * torch.tensor(strides, device=index.device)).sum(-1).reshape(-1)
    rows = updates.reshape([-1, *rest])
    target = linear.reshape([-1] + [1] * len(rest)).expand(rows.shape)
    reduction = node.attr("reduction", "none")
    if reduction == "none":
        out = flat.scatter(0, target, rows)
    else:
        out = flat.scatter_reduce(0, target, rows, _REDUCTIONS[reduction], include_self=True)
    return out.reshape(data.shape)


@onnx_op("DepthToSpace")
def _depth_to_space(node: Node, device: torch.device, x: Any) -> Any:
    b = int(node.attr("blocksize"))
    n, c, h, w = x.shape
    if node.attr("mode", "DCR") == "CRD":
        out = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        out = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    return out.reshape(n, c // (b * b), h * b, w * b)


@onnx_op("SpaceToDepth")
def _space_to_depth(node: Node, device: torch.device, x: Any) -> Any:
    b = int(node.attr("blocksize"))
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // b, b, w // b, b)
    if node.attr("mode", "DCR") == "CRD":  # opset 25's mode, the inverse of DepthToSpace CRD
        out = blocks.permute(0, 1, 3, 5, 2, 4)
    else:
        out = blocks.permute(0, 3, 5, 1, 2, 4)
    return out.reshape(n, c * b * b, h // b, w // b)
