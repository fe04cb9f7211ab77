"""A Deployment holds a ReplicaSet or a PipelinedModel where it holds a CompiledModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from parallel_models import chain_reference, make_chain_model, split_artifact

import ai_vmm
from ai_vmm.deploy.constraints import Constraints
from ai_vmm.deploy.deployment import Deployment
from ai_vmm.runtime.errors import ArtifactError
from ai_vmm.runtime.pipelined import PipelinedModel
from ai_vmm.runtime.replicas import ReplicaSet


def test_a_deployment_runs_replicas_and_a_pipeline(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    model = make_chain_model(layers=4)
    source = tmp_path / "chain.onnx"
    onnx.save(model, source)
    singles = [
        ai_vmm.compile(source, d, tmp_path / f"{d.replace(':', '-')}.vmm", tune=False).path
        for d in ("openvino:CPU", "onnxruntime:CPU")
    ]
    split = split_artifact(source, ["onnxruntime:CPU", "openvino:CPU"], tmp_path / "split.vmm")
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    for runtime, path in (
        (ReplicaSet.load(singles), singles[0]),
        (PipelinedModel.load(split), split),
    ):
        deployment = Deployment(
            runtime, artifact_path=path, explanation={}, constraints=Constraints()
        )
        assert deployment.kind == "model"
        assert [s.name for s in deployment.inputs] == ["x"]
        for _ in range(3):
            np.testing.assert_allclose(
                deployment(x=x)["y"], chain_reference(model, x), rtol=1e-4, atol=1e-4
            )
        assert deployment.stats()["calls"] == 3
        deployment.close()
        with pytest.raises(ArtifactError, match="closed"):
            runtime.run({"x": x})
