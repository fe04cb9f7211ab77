"""ONNX -> torch op functions: recurrent layers (registered in ``OPS``)."""

from __future__ import annotations

__all__: list[str] = []
