"""Explanations of a compile: where every node went and why, as a table and as a picture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEVICE_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def node_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per node: device, partition, reason (from the plan, or the single choice)."""
    plan = report.get("plan")
    if plan:
        return list(plan["nodes"])
    chosen = report.get("chosen", {})
    rows = [
        {
            "node": "(all nodes)",
            "op": "",
            "device": chosen.get("device", "?"),
            "partition": "p0",
            "why": chosen.get("rule", ""),
        }
    ]
    for candidate in report.get("candidates", []):
        for node, reason in candidate.get("unsupported_nodes", {}).items():
            rows.append(
                {
                    "node": node,
                    "op": "",
                    "device": "not " + candidate["device"],
                    "partition": "",
                    "why": reason,
                }
            )
        if candidate["status"] not in ("ok", "unsupported"):
            rows.append(
                {
                    "node": "(model)",
                    "op": "",
                    "device": "not " + candidate["device"],
                    "partition": "",
                    "why": f"{candidate['status']}: {candidate.get('reason', '')}",
                }
            )
    return rows


def node_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    plan = report.get("plan", {})
    title = f"placement ({report.get('chosen', {}).get('rule', '')})"
    if plan:
        estimate = plan["estimate"]
        title += f", estimated {estimate['estimated_ms']} ms: " + ", ".join(
            f"{k} {v}" for k, v in estimate["breakdown_ms"].items()
        )
    table = Table(title=title)
    for column in ("node", "op", "device", "partition", "why"):
        table.add_column(column)
    for row in node_rows(report):
        table.add_row(row["node"], row["op"], row["device"], row["partition"], row["why"])
    return table


def _layout(nodes: Sequence[str], edges: Sequence[Sequence[str]]) -> dict[str, tuple[float, float]]:
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from((a, b) for a, b in edges)
    positions: dict[str, tuple[float, float]] = {}
    for depth, generation in enumerate(nx.topological_generations(graph)):
        for row, name in enumerate(sorted(generation, key=list(nodes).index)):
            positions[name] = (float(depth), -float(row))
    return positions


def plot_plan(report: dict[str, Any], path: Path) -> bool:
    """Draw the partitioned graph (PNG or SVG by suffix); ``False`` when there is no plan."""
    plan = report.get("plan")
    if not plan:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = plan["nodes"]
    names = [row["node"] for row in rows]
    positions = _layout(names, plan.get("edges", []))
    devices = sorted({row["device"] for row in rows})
    colour = {d: DEVICE_COLOURS[i % len(DEVICE_COLOURS)] for i, d in enumerate(devices)}
    width = max(6.0, 0.35 * (max(x for x, _ in positions.values()) + 1))
    height = max(3.0, 0.35 * (max(-y for _, y in positions.values()) + 1))
    fig, ax = plt.subplots(figsize=(min(width, 60), min(height, 30)))
    for a, b in plan.get("edges", []):
        (x0, y0), (x1, y1) = positions[a], positions[b]
        ax.plot([x0, x1], [y0, y1], color="#999999", linewidth=0.5, zorder=1)
    for row in rows:
        x, y = positions[row["node"]]
        ax.scatter([x], [y], s=60, color=colour[row["device"]], zorder=2)
        if len(rows) <= 60:
            ax.annotate(
                f"{row['op']} ({row['partition']})",
                (x, y),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
    for device in devices:
        ax.scatter([], [], color=colour[device], label=device)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(
        f"partition plan: {len(plan['estimate']['partitions'])} partitions, "
        f"est. {plan['estimate']['estimated_ms']} ms"
    )
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None} if path.suffix == ".png" else None)
    plt.close(fig)
    return True
