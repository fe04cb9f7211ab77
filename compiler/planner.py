"""Partition planning: assign every node to a device, then group nodes into partitions.

The planner works on a ``PlanGraph``: nodes in topological order, each with the devices that can
run it (and why the others cannot) and an estimated time per device; tensors with their size,
producer and consumers. It minimizes the estimated end-to-end latency of a sequential run:

    sum of node times on their devices
    + for every tensor produced on one device and read on another: bytes / link bandwidth
      + link latency (once per consuming device)
    + per partition: the device's per-call overhead

subject to capability and to an acyclic partition graph. Planning is tagging: ``plan`` only
assigns devices and groups; ``ai_vmm.outline`` cuts the subgraphs.

Search: when the assignments to consider are few (``EXACT_LIMIT``), a branch-and-bound search
finds the optimum. Otherwise: start from each device taking everything it can run (the rest on
their cheapest capable device), improve by local moves (one node, one whole group of same-device
neighbours, or two adjacent nodes, to another capable device) while the objective drops, and
keep the best start. Groups are maximal sets of same-device nodes merged along edges when the
merge keeps the partition graph acyclic. ``brute_force`` enumerates every assignment (tests).

Objective ``"throughput"`` (``plan(..., objective="throughput")``): for a plan whose requests are
pipelined (``ai_vmm.runtime.pipelined``), a request leaves every ``max over devices`` of the
device's work per request (its nodes, its partitions' overheads, the tensors copied into it:
``stage_loads``); the planner minimizes that bottleneck, with the sequential latency as a tie
break (``THROUGHPUT_LATENCY_WEIGHT``). Its starts add balanced contiguous splits of the
topological order (``_segment_starts``); its local moves evaluate the whole objective.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx


@dataclass(frozen=True)
class Link:
    """Moving a tensor between two devices: ``bytes / bandwidth + latency``."""

    bandwidth_gbps: float
    latency_us: float

    def seconds(self, nbytes: int) -> float:
        return nbytes / (self.bandwidth_gbps * 1e9) + self.latency_us * 1e-6


@dataclass
class PlanNode:
    name: str
    op_type: str
    times: dict[str, float]
    """Estimated seconds on each device that can run the node."""
    unsupported: dict[str, str] = field(default_factory=dict)
    """Device -> why it cannot run the node."""


@dataclass
class PlanTensor:
    name: str
    nbytes: int
    producer: str | None
    """Producing node, or ``None`` for a graph input (it lives on the host)."""
    consumers: tuple[str, ...]
    is_output: bool = False


@dataclass
class PlanGraph:
    nodes: list[PlanNode]
    """In topological order."""
    tensors: list[PlanTensor]
    devices: list[str]
    overhead: dict[str, float]
    """Per-partition call overhead of each device, seconds."""
    links: dict[tuple[str, str], Link]
    """Link between two devices (either order); a missing pair means same memory (free)."""
    host: str = ""
    """The device where graph inputs and outputs live (transfers to/from it are counted)."""

    def link(self, a: str, b: str) -> Link | None:
        return self.links.get((a, b)) or self.links.get((b, a))


@dataclass
class Plan:
    assignment: dict[str, str]
    groups: list[list[str]]
    """Partitions: lists of node names, in an order that respects dependencies."""
    cost: float
    breakdown: dict[str, float]
    explanation: dict[str, str]

    def group_devices(self) -> list[str]:
        return [self.assignment[g[0]] for g in self.groups]

    def to_json(self) -> dict[str, Any]:
        return {
            "estimated_ms": round(self.cost * 1000, 4),
            "breakdown_ms": {k: round(v * 1000, 4) for k, v in self.breakdown.items()},
            "partitions": [{"device": self.assignment[g[0]], "nodes": len(g)} for g in self.groups],
        }


EXACT_LIMIT = 20_000
"""Above this many capable assignments, the planner uses local search instead of exact search."""


class PlanningError(Exception):
    """No device can run some node (the message lists them with each device's reason)."""


def _graph(plan_graph: PlanGraph) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(node.name for node in plan_graph.nodes)
    for tensor in plan_graph.tensors:
        if tensor.producer is not None:
            for consumer in tensor.consumers:
                if consumer != tensor.producer:
                    graph.add_edge(tensor.producer, consumer)
    return graph


def group_nodes(
    plan_graph: PlanGraph, assignment: dict[str, str], graph: nx.DiGraph | None = None
) -> list[list[str]]:
    """Merge same-device nodes into as few partitions as keep the partition graph acyclic.

    First along edges in topological order: two groups on one device merge when no path leaves
    one and comes back into the other through a third group. Then same-device groups with no
    path between them at all (parallel branches) merge too. The result lists each partition's
    nodes in topological order, partitions in an order that respects their dependencies.
    """
    order = [node.name for node in plan_graph.nodes]
    index = {name: i for i, name in enumerate(order)}
    succ: dict[int, set[int]] = {i: set() for i in range(len(order))}
    for tensor in plan_graph.tensors:
        if tensor.producer is None:
            continue
        for consumer in tensor.consumers:
            if consumer != tensor.producer and consumer in index:
                succ[index[tensor.producer]].add(index[consumer])
    pred: dict[int, set[int]] = {i: set() for i in succ}
    for u, targets in succ.items():
        for v in targets:
            pred[v].add(u)
    members: dict[int, list[int]] = {i: [i] for i in succ}
    group_of = list(range(len(order)))
    device = [assignment[name] for name in order]

    def reaches(start: set[int], goal: int, skip: int) -> bool:
        seen = set(start)
        stack = list(start)
        while stack:
            g = stack.pop()
            if g == goal:
                return True
            for nxt in succ[g]:
                if nxt != skip and nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    def merge(a: int, b: int) -> bool:
        if a == b:
            return True
        if reaches(succ[a] - {b}, b, a) or reaches(succ[b] - {a}, a, b):
            return False
        for node in members[b]:
            group_of[node] = a
        members[a] += members.pop(b)
        for s in succ.pop(b):
            pred[s].discard(b)
            if s != a:
                succ[a].add(s)
                pred[s].add(a)
        for p in pred.pop(b):
            succ[p].discard(b)
            if p != a:
                pred[a].add(p)
                succ[p].add(a)
        succ[a].discard(a)
        pred[a].discard(a)
        return True

    initial = {u: sorted(targets) for u, targets in succ.items()}
    for u in range(len(order)):
        for v in initial[u]:
            if device[u] == device[v]:
                merge(group_of[u], group_of[v])
    changed = True
    while changed:
        changed = False
        for a, b in itertools.combinations(sorted(members), 2):
            if a not in members or b not in members or device[a] != device[b]:
                continue
            if reaches({a}, b, -1) or reaches({b}, a, -1):
                continue
            changed = merge(a, b) or changed
    ranked = nx.DiGraph()
    ranked.add_nodes_from(members)
    ranked.add_edges_from((u, v) for u, targets in succ.items() for v in targets)
    ordered = nx.lexicographical_topological_sort(ranked, key=lambda g: min(members[g]))
    return [[order[i] for i in sorted(members[g])] for g in ordered]


def evaluate(
    plan_graph: PlanGraph, assignment: dict[str, str], groups: list[list[str]]
) -> tuple[float, dict[str, float]]:
    """The objective of an assignment: compute + transfers + per-partition overhead."""
    by_name = {node.name: node for node in plan_graph.nodes}
    compute = sum(by_name[n].times[assignment[n]] for n in assignment)
    transfer = 0.0
    for tensor in plan_graph.tensors:
        source = assignment[tensor.producer] if tensor.producer else plan_graph.host
        readers = {assignment[c] for c in tensor.consumers if c in assignment}
        if tensor.is_output and plan_graph.host:
            readers.add(plan_graph.host)
        for reader in readers - {source}:
            link = plan_graph.link(source, reader)
            if link is not None:
                transfer += link.seconds(tensor.nbytes)
    overhead = sum(plan_graph.overhead.get(assignment[g[0]], 0.0) for g in groups)
    return compute + transfer + overhead, {
        "compute": compute,
        "transfer": transfer,
        "overhead": overhead,
    }


def _check_capable(plan_graph: PlanGraph) -> None:
    stuck = [node for node in plan_graph.nodes if not node.times]
    if stuck:
        details = "; ".join(
            f"{n.name} ({n.op_type}: "
            + ", ".join(f"{d}: {r}" for d, r in sorted(n.unsupported.items()))
            + ")"
            for n in stuck[:5]
        )
        raise PlanningError(
            f"no available device can run {len(stuck)} node(s): {details}"
            + (" ..." if len(stuck) > 5 else "")
        )


def plan(
    plan_graph: PlanGraph, priority: Sequence[str] | None = None, objective: str = "latency"
) -> Plan:
    """Assign devices and group partitions.

    With ``priority`` (the ``--target a:B,c:D`` list), each node goes to the first listed device
    that can run it, as OpenVINO's HETERO plugin does; without it, the cost model decides.
    ``objective``: ``"latency"`` (one request at a time) or ``"throughput"`` (requests
    pipelined through the partitions: the busiest device per request is minimized).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    if objective == "throughput" and not priority:
        return plan_throughput(plan_graph)
    _check_capable(plan_graph)
    graph = _graph(plan_graph)
    if priority:
        assignment = {
            node.name: next(d for d in [*priority, *node.times] if d in node.times)
            for node in plan_graph.nodes
        }
        return _finished(
            plan_graph, assignment, graph, evaluate, "first in the --target priority list"
        )
    exact = _search_space(plan_graph) <= EXACT_LIMIT
    assignment = _exact(plan_graph, graph) if exact else local_search(plan_graph, graph)
    return _finished(plan_graph, assignment, graph, evaluate, "lowest estimated end-to-end latency")


def _search_space(plan_graph: PlanGraph) -> int:
    """How many assignments there are: the product of each node's capable devices."""
    space = 1
    for node in plan_graph.nodes:
        space *= len(node.times)
    return space


def _finished(
    plan_graph: PlanGraph,
    assignment: dict[str, str],
    graph: nx.DiGraph,
    score: Any,
    rule: str,
) -> Plan:
    """Group an assignment, cost it with ``score`` and explain every node by ``rule``."""
    groups = group_nodes(plan_graph, assignment, graph)
    cost, breakdown = score(plan_graph, assignment, groups)
    explanation = {node.name: _why(node, assignment[node.name], rule) for node in plan_graph.nodes}
    return Plan(assignment, groups, cost, breakdown, explanation)


def _why(node: PlanNode, device: str, rule: str) -> str:
    others = [d for d in node.times if d != device]
    text = f"{rule}; est. {node.times[device] * 1e6:.1f} us here"
    if others:
        text += " vs " + ", ".join(f"{d} {node.times[d] * 1e6:.1f} us" for d in others)
    if node.unsupported:
        text += "; cannot run on " + ", ".join(
            f"{d} ({r})" for d, r in sorted(node.unsupported.items())
        )
    return text


def _starts(plan_graph: PlanGraph) -> list[dict[str, str]]:
    """Each device taking everything it can run; the rest on their cheapest capable device."""
    return [
        {
            n.name: device if device in n.times else min(n.times, key=n.times.__getitem__)
            for n in plan_graph.nodes
        }
        for device in plan_graph.devices
    ]


def local_search(plan_graph: PlanGraph, graph: nx.DiGraph | None = None) -> dict[str, str]:
    """The heuristic: improve every start by local moves; keep the best result."""
    graph = graph if graph is not None else _graph(plan_graph)
    best: tuple[float, dict[str, str]] = (float("inf"), {})
    for start in _starts(plan_graph):
        assignment = _improve(plan_graph, start, graph)
        cost = evaluate(plan_graph, assignment, group_nodes(plan_graph, assignment, graph))[0]
        if cost < best[0]:
            best = (cost, assignment)
    return best[1]


def _transfer_of(plan_graph: PlanGraph, tensor: PlanTensor, assignment: dict[str, str]) -> float:
    source = assignment[tensor.producer] if tensor.producer else plan_graph.host
    readers = {assignment[c] for c in tensor.consumers if c in assignment}
    if tensor.is_output and plan_graph.host:
        readers.add(plan_graph.host)
    total = 0.0
    for reader in readers - {source}:
        link = plan_graph.link(source, reader)
        if link is not None:
            total += link.seconds(tensor.nbytes)
    return total


def _improve(
    plan_graph: PlanGraph, assignment: dict[str, str], graph: nx.DiGraph
) -> dict[str, str]:
    """Move one node, one group or two adjacent nodes to another device while the cost drops.

    A move's compute and transfer change is computed locally; only a move whose local change
    could be outweighed by saved partition overheads pays for regrouping the whole graph.
    """
    by_name = {node.name: node for node in plan_graph.nodes}
    touching: dict[str, list[PlanTensor]] = {}
    for tensor in plan_graph.tensors:
        for name in {tensor.producer, *tensor.consumers} - {None}:
            touching.setdefault(str(name), []).append(tensor)
    min_overhead = min(plan_graph.overhead.values(), default=0.0)
    groups = group_nodes(plan_graph, assignment, graph)
    best, parts = evaluate(plan_graph, assignment, groups)
    pairs = [[u, v] for u, v in graph.edges] if graph.number_of_nodes() <= PAIR_MOVES_UP_TO else []
    improved = True
    while improved:
        improved = False
        for move in [[n] for n in assignment] + groups + pairs:
            for device in plan_graph.devices:
                if all(assignment[n] == device for n in move):
                    continue
                if not all(device in by_name[n].times for n in move):
                    continue
                trial = dict(assignment)
                trial.update({n: device for n in move})
                tensors = {id(t): t for n in move for t in touching.get(n, [])}.values()
                local = sum(
                    by_name[n].times[device] - by_name[n].times[assignment[n]] for n in move
                ) + sum(
                    _transfer_of(plan_graph, t, trial) - _transfer_of(plan_graph, t, assignment)
                    for t in tensors
                )
                if local >= parts["overhead"] - min_overhead - 1e-15:
                    continue  # even one partition fewer could not pay for it
                trial_groups = group_nodes(plan_graph, trial, graph)
                cost, trial_parts = evaluate(plan_graph, trial, trial_groups)
                if cost < best - 1e-12:
                    assignment, groups, best, parts = trial, trial_groups, cost, trial_parts
                    improved = True
                    break
            if improved:
                break
    return assignment


PAIR_MOVES_UP_TO = 200
"""Two-node moves are tried on graphs up to this many nodes (their number grows with edges)."""


def _exact(plan_graph: PlanGraph, graph: nx.DiGraph) -> dict[str, str]:
    """Branch and bound in topological order; the bound is compute so far + the cheapest rest.

    Transfers and overheads are never negative, so a partial assignment whose compute bound
    already reaches the best complete cost cannot lead to a better one.
    """
    nodes = plan_graph.nodes
    cheapest_rest = [0.0] * (len(nodes) + 1)
    for i in range(len(nodes) - 1, -1, -1):
        cheapest_rest[i] = cheapest_rest[i + 1] + min(nodes[i].times.values())
    start = local_search(plan_graph, graph)
    best_cost = evaluate(plan_graph, start, group_nodes(plan_graph, start, graph))[0]
    best = dict(start)
    partial: dict[str, str] = {}

    def descend(i: int, compute: float) -> None:
        nonlocal best_cost, best
        if compute + cheapest_rest[i] >= best_cost - 1e-15:
            return
        if i == len(nodes):
            cost = evaluate(plan_graph, partial, group_nodes(plan_graph, partial, graph))[0]
            if cost < best_cost - 1e-15:
                best_cost, best = cost, dict(partial)
            return
        node = nodes[i]
        for device in sorted(node.times, key=node.times.__getitem__):
            partial[node.name] = device
            descend(i + 1, compute + node.times[device])
        del partial[node.name]

    descend(0, 0.0)
    return best


def brute_force(plan_graph: PlanGraph, objective: str = "latency") -> tuple[float, dict[str, str]]:
    """The optimum over every capable assignment (exponential: small graphs only)."""
    score = evaluate_throughput if objective == "throughput" else evaluate
    _check_capable(plan_graph)
    names = [node.name for node in plan_graph.nodes]
    choices: Iterable[tuple[str, ...]] = itertools.product(
        *[sorted(node.times) for node in plan_graph.nodes]
    )
    graph = _graph(plan_graph)
    best: tuple[float, dict[str, str]] = (float("inf"), {})
    for combo in choices:
        assignment = dict(zip(names, combo, strict=True))
        cost = score(plan_graph, assignment, group_nodes(plan_graph, assignment, graph))[0]
        if cost < best[0]:
            best = (cost, assignment)
    return best


# -- the throughput objective ------------------------------------------------------------------

OBJECTIVES = ("latency", "throughput")

THROUGHPUT_LATENCY_WEIGHT = 1e-3
"""Weight of the sequential latency in the throughput objective: a tie break between plans
with the same bottleneck (fewer partitions, fewer transfers), never a reason to trade one."""


def stage_loads(
    plan_graph: PlanGraph, assignment: dict[str, str], groups: list[list[str]]
) -> dict[str, float]:
    """Seconds of work per request on each device when requests stream through the plan.

    A device runs one partition at a time, so its load is the compute of its nodes, the
    overhead of each of its partitions, and the copies of tensors into it (the reading side
    of a link waits for them). Devices that share no link share nothing here: a plan graph
    whose devices compete for one resource (two CPU targets with all cores each) should list
    them with the figures each gets when they run at once.
    """
    by_name = {node.name: node for node in plan_graph.nodes}
    loads = dict.fromkeys(plan_graph.devices, 0.0)
    for name, device in assignment.items():
        loads[device] = loads.get(device, 0.0) + by_name[name].times[device]
    for group in groups:
        device = assignment[group[0]]
        loads[device] += plan_graph.overhead.get(device, 0.0)
    for tensor in plan_graph.tensors:
        source = assignment[tensor.producer] if tensor.producer else plan_graph.host
        readers = {assignment[c] for c in tensor.consumers if c in assignment}
        if tensor.is_output and plan_graph.host:
            readers.add(plan_graph.host)
        for reader in readers - {source}:
            link = plan_graph.link(source, reader)
            if link is not None:
                loads[reader] = loads.get(reader, 0.0) + link.seconds(tensor.nbytes)
    return loads


def evaluate_throughput(
    plan_graph: PlanGraph, assignment: dict[str, str], groups: list[list[str]]
) -> tuple[float, dict[str, float]]:
    """The throughput objective: the busiest device's seconds per request, plus a small
    weight of the sequential latency. The breakdown has both and each device's load."""
    loads = stage_loads(plan_graph, assignment, groups)
    latency, parts = evaluate(plan_graph, assignment, groups)
    bottleneck = max(loads.values(), default=0.0)
    breakdown = {"bottleneck": bottleneck, "latency": latency, **parts}
    breakdown.update({f"load {device}": load for device, load in loads.items()})
    return bottleneck + THROUGHPUT_LATENCY_WEIGHT * latency, breakdown


def plan_throughput(plan_graph: PlanGraph) -> Plan:
    """The plan with the highest estimated pipelined throughput (see ``plan``)."""
    _check_capable(plan_graph)
    graph = _graph(plan_graph)
    if _search_space(plan_graph) <= EXACT_LIMIT:
        assignment = _exact_throughput(plan_graph, graph)
    else:
        assignment = _search_throughput(plan_graph, graph)
    return _finished(
        plan_graph,
        assignment,
        graph,
        evaluate_throughput,
        "highest estimated throughput, requests pipelined",
    )


def _score(plan_graph: PlanGraph, assignment: dict[str, str], graph: nx.DiGraph) -> float:
    return evaluate_throughput(plan_graph, assignment, group_nodes(plan_graph, assignment, graph))[
        0
    ]


def _ranked(
    plan_graph: PlanGraph, assignment: dict[str, str], graph: nx.DiGraph
) -> tuple[float, float]:
    """The objective, then the sum of squared loads: moving work off a device that is not the
    busiest changes no maximum, but it is what lets the next move lower the maximum."""
    groups = group_nodes(plan_graph, assignment, graph)
    loads = stage_loads(plan_graph, assignment, groups)
    return evaluate_throughput(plan_graph, assignment, groups)[0], sum(
        v * v for v in loads.values()
    )


def _segment_starts(plan_graph: PlanGraph, orders: int = 24) -> list[dict[str, str]]:
    """Contiguous splits of the topological order, one segment per device, balanced.

    For each order of the devices (up to ``orders`` of them), the smallest bottleneck ``T``
    for which filling the devices in that order, each up to ``T`` of estimated compute, places
    every node (a binary search over ``T``); a node its segment's device cannot run goes to
    its cheapest capable device. A prefix of a topological order depends on nothing after it,
    so such a split is a pipeline without cycles.
    """
    nodes = plan_graph.nodes
    starts: list[dict[str, str]] = []
    for order in itertools.islice(itertools.permutations(plan_graph.devices), orders):
        if len(order) < 2:
            continue

        def fill(limit: float, order: tuple[str, ...] = order) -> dict[str, str] | None:
            assignment: dict[str, str] = {}
            slot, load = 0, 0.0
            for node in nodes:
                if not any(d in node.times for d in order[slot:]):
                    return None
                while True:
                    device = order[slot]
                    time_here = node.times.get(device)
                    if time_here is not None and load + time_here <= limit:
                        assignment[node.name] = device
                        load += time_here
                        break
                    if time_here is None and slot == len(order) - 1:
                        assignment[node.name] = min(node.times, key=node.times.__getitem__)
                        break
                    if time_here is None and load == 0.0:
                        assignment[node.name] = min(node.times, key=node.times.__getitem__)
                        break
                    if slot == len(order) - 1:
                        return None
                    slot, load = slot + 1, 0.0
            return assignment

        high = sum(max(node.times.values()) for node in nodes) + 1e-12
        low = 0.0
        best = fill(high)
        if best is None:
            continue
        for _ in range(40):
            middle = (low + high) / 2
            found = fill(middle)
            if found is None:
                low = middle
            else:
                high, best = middle, found
        starts.append(best)
    return starts


def _search_throughput(plan_graph: PlanGraph, graph: nx.DiGraph) -> dict[str, str]:
    """Local search from each device alone and from balanced splits; the best result."""
    best: tuple[float, dict[str, str]] = (float("inf"), {})
    seen: dict[tuple[str, ...], dict[str, str]] = {}
    for start in [*_starts(plan_graph), *_segment_starts(plan_graph)]:
        seen.setdefault(tuple(start[n.name] for n in plan_graph.nodes), start)
    # Each local search regroups the graph per trial: improve only the most promising starts.
    ranked = sorted(seen.values(), key=lambda a: _score(plan_graph, a, graph))
    for start in ranked[:THROUGHPUT_STARTS]:
        assignment = _improve_throughput(plan_graph, start, graph)
        cost = _score(plan_graph, assignment, graph)
        if cost < best[0]:
            best = (cost, assignment)
    return best[1]


THROUGHPUT_MOVE_ROUNDS = 50
"""Improving moves the throughput search makes from one start at most."""

THROUGHPUT_STARTS = 3
"""Starts (the best by their objective) that the throughput search improves."""


def _improve_throughput(
    plan_graph: PlanGraph, assignment: dict[str, str], graph: nx.DiGraph
) -> dict[str, str]:
    """Move a node or two adjacent nodes on a partition border, or a whole partition, while
    the objective drops (then the sum of squared loads: see ``_ranked``).

    Border nodes have a neighbour on another device; inner nodes move only while the plan is
    one partition. Each trial regroups the graph, and a move from inside a partition would cut
    it in three, which pays only in rare plans. Pairs only up to ``PAIR_MOVES_UP_TO`` nodes.
    """
    by_name = {node.name: node for node in plan_graph.nodes}
    best = _ranked(plan_graph, assignment, graph)
    small = graph.number_of_nodes() <= PAIR_MOVES_UP_TO
    for _ in range(THROUGHPUT_MOVE_ROUNDS):
        groups = group_nodes(plan_graph, assignment, graph)
        border = {
            n
            for n in assignment
            if any(
                assignment[m] != assignment[n]
                for m in (*graph.predecessors(n), *graph.successors(n))
            )
        }
        singles = [[n] for n in assignment] if small and len(groups) < 2 else []
        singles += [[n] for n in sorted(border)]
        pairs = [[u, v] for u, v in graph.edges if u in border or v in border] if small else []
        improved = False
        for move in singles + groups + pairs:
            for device in plan_graph.devices:
                if all(assignment[n] == device for n in move):
                    continue
                if not all(device in by_name[n].times for n in move):
                    continue
                trial = {**assignment, **dict.fromkeys(move, device)}
                cost = _ranked(plan_graph, trial, graph)
                if cost[0] < best[0] - 1e-15 or (
                    cost[0] <= best[0] and cost[1] < best[1] * (1 - 1e-9)
                ):
                    assignment, best, improved = trial, cost, True
                    break
            if improved:
                break
        if not improved:
            break
    return assignment


def _exact_throughput(plan_graph: PlanGraph, graph: nx.DiGraph) -> dict[str, str]:
    """Branch and bound for the throughput objective.

    Bound for a partial assignment: the busiest device's compute so far, and the total
    compute (so far plus the cheapest rest) spread evenly over every device; loads only grow,
    so neither can exceed the final bottleneck.
    """
    nodes = plan_graph.nodes
    cheapest_rest = [0.0] * (len(nodes) + 1)
    for i in range(len(nodes) - 1, -1, -1):
        cheapest_rest[i] = cheapest_rest[i + 1] + min(nodes[i].times.values())
    start = _search_throughput(plan_graph, graph)
    best_cost = _score(plan_graph, start, graph)
    best = dict(start)
    partial: dict[str, str] = {}
    loads = dict.fromkeys(plan_graph.devices, 0.0)
    count = max(1, len(plan_graph.devices))

    def descend(i: int, total: float) -> None:
        nonlocal best_cost, best
        bound = max(max(loads.values()), (total + cheapest_rest[i]) / count)
        if bound >= best_cost - 1e-15:
            return
        if i == len(nodes):
            cost = _score(plan_graph, partial, graph)
            if cost < best_cost - 1e-15:
                best_cost, best = cost, dict(partial)
            return
        node = nodes[i]
        for device in sorted(node.times, key=lambda d: loads[d] + node.times[d]):
            partial[node.name] = device
            loads[device] += node.times[device]
            descend(i + 1, total + node.times[device])
            loads[device] -= node.times[device]
        del partial[node.name]

    descend(0, 0.0)
    return best
