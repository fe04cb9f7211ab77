"""Shared fixtures: tiny hand-built ONNX models and the model zoo (built once per session)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import onnx
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent / "support"))

from tests_support import make_mlp_model  # noqa: E402


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp_model(), path)
    return path


@pytest.fixture(scope="session")
def zoo() -> ModuleType:
    """The model zoo module (models/zoo.py; models/ is not an installed package)."""
    from ai_vmm.bench_suite import load_zoo

    return load_zoo(REPO / "models" / "zoo.py")


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this session builds zoo models (each once: ``zoo.build`` reuses what is there)."""
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def zoo_model(zoo: ModuleType, zoo_dir: Path) -> Callable[[str], Path]:
    """Build a zoo model once per session and return its ONNX path."""
    root = zoo_dir
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = zoo.build(name, root)
        return built[name]

    return get


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="Rewrite golden files (tests/golden/) from this run instead of comparing.",
    )
