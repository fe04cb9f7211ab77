"""Whether the replicas of a ``ReplicaSet`` hold one model: the same input names and element
types, shapes of one rank whose fixed sizes agree (a replica built for a fixed batch and one
with a dynamic batch hold the same model); and one input check for the whole set where every
replica's signature is the same, shapes included. Split from ``runtime/replicas.py``."""

from __future__ import annotations

from typing import Any

from ai_vmm.runtime.errors import ArtifactError


def check_signatures(replicas: list[tuple[str, Any]]) -> None:
    """Every replica (name, model) takes the first one's inputs (module doc), or ArtifactError."""
    first_name, first = replicas[0]
    want = _names_and_dtypes(first)
    for name, other in replicas[1:]:
        got = _names_and_dtypes(other)
        if want is not None and got is not None and not _compatible(want, got):
            raise ArtifactError(
                f"replicas {first_name} and {name} take different inputs "
                f"({_describe(want)} against {_describe(got)}): a replica set holds one model"
            )


def _compatible(a: list[tuple[str, str, str]], b: list[tuple[str, str, str]]) -> bool:
    """Same names and dtypes; shapes of the same rank whose fixed sizes agree where both are
    fixed (a replica built for batch 8 and one with a dynamic batch hold the same model)."""
    if [(n, d) for n, d, _ in a] != [(n, d) for n, d, _ in b]:
        return False
    for (_, _, x), (_, _, y) in zip(a, b, strict=True):
        if x == "?" or y == "?":
            continue
        xs, ys = x.strip("[]").split(","), y.strip("[]").split(",")
        if len(xs) != len(ys) or any(
            p != q and "?" not in (p, q) for p, q in zip(xs, ys, strict=True)
        ):
            return False
    return True


def _names_and_dtypes(model: Any) -> list[tuple[str, str, str]] | None:
    """Each input's name, dtype and shape with named or ranged axes as ``?``: replicas of one
    model may differ there (one built for a fixed batch), not in fixed sizes or rank."""
    specs = getattr(model, "inputs", None)
    if not specs:
        return None
    try:
        return [(str(s.name), str(s.dtype), _fixed_dims(s.shape)) for s in specs]
    except AttributeError:
        return None


def _fixed_dims(shape: Any) -> str:
    if shape is None:
        return "?"
    return "[" + ",".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"


def _describe(specs: list[tuple[str, str, str]]) -> str:
    return ", ".join(f"{n}: {d}{s}" for n, d, s in specs)


def shared_checker(models: list[Any]) -> Any:
    """One input check at ``submit`` when every replica has the same signature (shapes too);
    otherwise each replica checks its own inputs when it runs."""
    from ai_vmm.runtime.model import InputChecker

    specs = [getattr(m, "inputs", None) for m in models]
    first = specs[0]
    if not first or any(s != first for s in specs[1:]):
        return None
    try:
        return InputChecker(tuple(first))
    except (AttributeError, TypeError):
        return None


__all__ = ["check_signatures", "shared_checker"]
