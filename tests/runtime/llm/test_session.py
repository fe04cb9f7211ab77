"""``open_session``: a missing backend package is a DeviceError that says what to install; a
broken module of ours is not passed off as a missing package."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from lm_support import tiny_artifact

from ai_vmm.runtime.artifact import read_manifest
from ai_vmm.runtime.errors import DeviceError
from ai_vmm.runtime.llm import session
from ai_vmm.runtime.llm.spec import LMSpec


def _spec() -> tuple[Path, LMSpec]:
    root = tiny_artifact("llama", "openvino:CPU")
    return root, LMSpec.from_manifest(read_manifest(root))


@pytest.mark.parametrize(
    ("missing", "raised"), [("openvino", DeviceError), ("ai_vmm.runtime.llm.helpers", ImportError)]
)
def test_import_errors_name_their_cause(
    monkeypatch: pytest.MonkeyPatch, missing: str, raised: type[Exception]
) -> None:
    root, spec = _spec()

    def fail(name: str, *args: Any) -> Any:
        raise ImportError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(raised) as info:
        session.open_session(root, spec)
    assert type(info.value) is raised
    if raised is DeviceError:
        assert "pip install openvino" in str(info.value)
