"""Outlining: cut each planned partition out of the model as a self-contained ONNX model.

A partition's inputs are the tensors its nodes read (subgraph bodies included) that it neither
produces nor holds as weights; its outputs are the tensors it produces that a later partition
reads or that the model returns. Weights go with every partition that reads them. The planner
guarantees the partition graph is acyclic, so each partition runs once, after its producers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx
import onnx.helper as oh
import onnx_ir as ir

from ai_vmm.runtime.errors import CompileError


@dataclass
class Outlined:
    """One partition: its ONNX model and its boundary tensors."""

    model: onnx.ModelProto
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every name a node reads, including outer-scope names read inside its subgraphs."""
    names = {name for name in node.input if name}
    for attribute in node.attribute:
        graphs: Iterable[onnx.GraphProto] = []
        if attribute.type == onnx.AttributeProto.GRAPH:
            graphs = [attribute.g]
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            graphs = attribute.graphs
        for graph in graphs:
            local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            for inner in graph.node:
                local |= {o for o in inner.output if o}
            for inner in graph.node:
                names |= _reads(inner) - local
    return names


def outline(model: ir.Model, groups: list[list[str]]) -> list[Outlined]:
    """Cut ``groups`` (lists of node names, in dependency order) out of ``model``."""
    proto = ir.serde.serialize_model(model)
    graph = proto.graph
    value_info = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}
    initializers = {t.name: t for t in graph.initializer}
    by_name = {node.name: node for node in graph.node}
    group_of = {name: i for i, group in enumerate(groups) for name in group}
    graph_outputs = [o.name for o in graph.output]
    readers: dict[str, set[int]] = {}
    for node in graph.node:
        for name in _reads(node):
            readers.setdefault(name, set()).add(group_of[node.name])
    outlined = []
    for index, group in enumerate(groups):
        nodes = [by_name[name] for name in group]
        produced = [o for node in nodes for o in node.output if o]
        produced_set = set(produced)
        reads = set().union(*(_reads(node) for node in nodes))
        inputs = sorted(n for n in reads if n not in produced_set and n not in initializers)
        outputs = [
            name for name in produced if name in graph_outputs or readers.get(name, set()) - {index}
        ]
        missing = [n for n in (*inputs, *outputs) if n not in value_info]
        if missing:
            raise CompileError(
                f"cannot outline partition {index}: no type known for {', '.join(missing[:3])} "
                f"(shape inference could not type it); compile for a single target instead"
            )
        sub = oh.make_graph(
            nodes,
            f"{graph.name or 'model'}_p{index}",
            [value_info[n] for n in inputs],
            [value_info[n] for n in outputs],
            [initializers[n] for n in sorted(reads & set(initializers))],
        )
        part = oh.make_model(
            sub,
            opset_imports=list(proto.opset_import),
            ir_version=proto.ir_version,
            functions=list(proto.functions),
        )
        outlined.append(Outlined(part, tuple(inputs), tuple(outputs)))
    return outlined
