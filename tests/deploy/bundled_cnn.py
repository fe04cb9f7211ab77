"""The bundled tiny CNN and real-looking samples around its bundled input (deploy tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CNN = REPO / "models" / "bundled" / "tiny_cnn.onnx"


def cnn_samples(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``count`` inputs: the bundled input plus a little noise each."""
    rng = np.random.default_rng(seed)
    base = np.load(REPO / "models" / "bundled" / "tiny_cnn_input.npz")["pixel_values"]
    return [
        {"pixel_values": (base + 0.05 * rng.standard_normal(base.shape)).astype(np.float32)}
        for _ in range(count)
    ]
