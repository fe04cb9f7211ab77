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


@pytest.mark.parametrize(
    "target", ["openvino:CPU", "openvino:CPU+paged", "onnxruntime:CPU", "cuda:cpu"]
)
def test_every_backend_refuses_a_mask_that_does_not_fit(target: str) -> None:
    """The one step check (``check_step``) in each backend: a mask one column short is a
    clean InputError, not a numpy or backend error."""
    import numpy as np

    from ai_vmm.runtime.errors import InputError

    if target == "cuda:cpu":
        pytest.importorskip("torch")
    root = tiny_artifact("llama", target)
    spec = LMSpec.from_manifest(read_manifest(root))
    decoder = session.open_session(root, spec)
    try:
        context = decoder.context()
        ids = np.array([[5, 6, 7]], np.int64)
        with pytest.raises(InputError, match="does not fit 1 rows x \\(0 cached \\+ 3 new\\)"):
            context.forward(ids, np.ones((1, 2), np.int64), np.arange(3)[None], np.array([2]))
    finally:
        decoder.close()
