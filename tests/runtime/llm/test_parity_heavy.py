"""The full parity run (minutes): six architectures and SmolLM2, 200 greedy tokens, both CPU
targets, identical to transformers; seeded sampling reproducible. ``pytest -m heavy``.

The same run writes its table into docs/generate.md: ``python scripts/llm_parity.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lm_support import SMOLLM2

from tests_support import load_module

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def parity() -> object:
    return load_module(REPO / "scripts" / "llm_parity.py", "llm_parity")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "phi3", "gemma", "gpt_neox"])
def test_random_weight_architectures(parity: object, arch: str) -> None:
    rows = parity.run([arch], 200, smollm2=False, say=lambda m: None)  # type: ignore[attr-defined]
    assert len(rows) == 2
    for row in rows:
        assert row["identical"] == row["tokens"] == 200, row
        assert row["seeded_reproducible"], row
        assert row["distinct"] > 3, row  # the reply is not one token repeated


def test_smollm2_real_weights(parity: object) -> None:
    if not SMOLLM2.is_file():
        pytest.skip(
            f"{SMOLLM2} missing: bash ../shared/realmodels/fetch.sh ~/.cache/ai-vmm/realmodels"
        )
    rows = parity.run([], 200, smollm2=True, say=lambda m: None)  # type: ignore[attr-defined]
    for row in rows:
        assert row["identical"] == row["tokens"] == 200, row
        assert row["seeded_reproducible"], row
