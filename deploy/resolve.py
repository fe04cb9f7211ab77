"""Finding the model a deployment names, without a hub: paths, the local HF cache, our store.

``resolve(model)`` looks, in order:

1. at an explicit path: its format is read from the files (ONNX, a Hugging Face folder with
   ``config.json``, a ``.gguf`` file, an OpenVINO IR ``.xml`` + ``.bin``, an ai-vmm artifact
   directory or zip, and what the compiler's frontends take: TFLite, Keras, SavedModel,
   ``.pt2``, TorchScript); an in-memory model (``nn.Module``, ``onnx.ModelProto``, Keras) is
   taken as it is;
2. at the local Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``,
   ``~/.cache/huggingface/hub``): ``models--ORG--NAME/snapshots/REV/`` for an ID ``ORG/NAME``
   (``@REV`` picks a revision; ``ORG/NAME/FILE`` a file in it, e.g. one of several GGUFs);
   nothing is downloaded;
3. at our artifact store (``models/<name>.vmm`` of the deployment store).

An ID found nowhere is a one-line ``ModelLoadError`` naming every place searched. Nothing here
ever makes a model from a configuration alone: no weights, no model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_vmm.deploy.store import DeploymentStore
from ai_vmm.runtime.artifact import MANIFEST, is_artifact
from ai_vmm.runtime.errors import ModelLoadError

FRAMEWORK_SUFFIXES = (
    ".tflite",
    ".keras",
    ".h5",
    ".hdf5",
    ".pt2",
    ".pt",
    ".pth",
    ".jit",
    ".torchscript",
)
WEIGHT_ONLY_SUFFIXES = (".safetensors", ".bin", ".npz", ".ckpt")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
GGUF_MAGIC = b"GGUF"


@dataclass
class ResolvedModel:
    """A model found, with its format and where it was found.

    ``kind`` is one of ``onnx``, ``onnx-proto``, ``artifact``, ``openvino-ir``, ``causal-lm``,
    ``hf-model`` (a Hugging Face folder of a model that is not a causal LM), ``torch-module``,
    ``framework`` (anything else a compiler frontend takes).
    """

    kind: str
    source: Any
    label: str
    found: str
    searched: list[str] = field(default_factory=list)
    model_id: str | None = None

    @property
    def path(self) -> Path | None:
        return Path(self.source) if isinstance(self.source, str | Path) else None


def hf_cache_roots(env: Mapping[str, str] | None = None) -> list[Path]:
    """The Hugging Face hub cache directories to look in, in order (duplicates dropped)."""
    env = os.environ if env is None else env
    roots: list[Path] = []
    if env.get("HF_HUB_CACHE"):
        roots.append(Path(env["HF_HUB_CACHE"]).expanduser())
    if env.get("HF_HOME"):
        roots.append(Path(env["HF_HOME"]).expanduser() / "hub")
    if env.get("XDG_CACHE_HOME"):
        roots.append(Path(env["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub")
    roots.append(Path.home() / ".cache" / "huggingface" / "hub")
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def resolve(
    model: Any, store: DeploymentStore, env: Mapping[str, str] | None = None
) -> ResolvedModel:
    """Find ``model`` (a path, an ID, or an in-memory model) and name its format.

    Raises:
        ModelLoadError: the path holds no model of a known format, or the ID is found nowhere
            (the message lists every place searched).
    """
    if not isinstance(model, str | Path):
        return _resolve_object(model)
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        return detect(path, f"path {path}")
    searched = [f"path {path.resolve()} (does not exist)"]
    if _looks_like_path(text):
        raise ModelLoadError(f"model {text!r} not found: {searched[0]}")
    cached = _from_hf_cache(text, hf_cache_roots(env), searched)
    if cached is not None:
        return cached
    named = store.named(text)
    if is_artifact(named):
        return ResolvedModel("artifact", named, text, f"artifact store {named}", model_id=text)
    searched.append(f"artifact store {named}")
    raise ModelLoadError(
        f"model {text!r} not found; searched: {'; '.join(searched)}. ai-vmm never downloads "
        "models and never makes one with random weights: give a path, or fetch the model into "
        "the Hugging Face cache first (huggingface-cli download ID)"
    )


def _looks_like_path(text: str) -> bool:
    """``./m.onnx``, ``/x/y``, ``~/m``: clearly a path, never an ID to search for."""
    return text.startswith((".", "/", "~"))


def detect(path: Path, found: str) -> ResolvedModel:
    """The format of the model at ``path`` (a file or a directory), read from its files.

    Raises:
        ModelLoadError: nothing there is a model ai-vmm can deploy (says what it expected).
    """
    label = str(path)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            if not is_artifact(path):
                raise ModelLoadError(f"{path} has a manifest.json that is not an ai-vmm manifest")
            return ResolvedModel("artifact", path, label, found)
        if (path / "config.json").is_file():
            return ResolvedModel(_hf_kind(path), path, label, found)
        if (path / "saved_model.pb").is_file():
            return ResolvedModel("framework", path, label, found)
        ir_files = sorted(path.glob("*.xml"))
        if len(ir_files) == 1 and ir_files[0].with_suffix(".bin").is_file():
            return ResolvedModel("openvino-ir", ir_files[0], str(ir_files[0]), found)
        raise ModelLoadError(
            f"{path} is a directory without manifest.json (an ai-vmm artifact), config.json "
            "(a Hugging Face model), saved_model.pb or one OpenVINO .xml/.bin pair"
        )
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return ResolvedModel("onnx", path, label, found)
    if suffix == ".gguf":
        if _head(path, 4) != GGUF_MAGIC:
            raise ModelLoadError(f"{path} is not a GGUF file (no GGUF magic at its start)")
        return ResolvedModel("causal-lm", path, label, found)
    if suffix == ".xml":
        if not path.with_suffix(".bin").is_file():
            raise ModelLoadError(
                f"{path}: an OpenVINO IR needs its weights beside it ({path.with_suffix('.bin')})"
            )
        if b"<net" not in _head(path, 4096):
            raise ModelLoadError(f"{path} is not an OpenVINO IR (no <net> element)")
        return ResolvedModel("openvino-ir", path, label, found)
    if suffix == ".zip" or path.name.endswith(".vmm"):
        if is_artifact(path):
            return ResolvedModel("artifact", path, label, found)
        raise ModelLoadError(f"{path} is not an ai-vmm artifact (no valid {MANIFEST})")
    if suffix in WEIGHT_ONLY_SUFFIXES:
        raise ModelLoadError(
            f"{path} holds weights only: give the folder that has its config.json (a Hugging "
            "Face model), or the model file itself"
        )
    if suffix in FRAMEWORK_SUFFIXES:
        return ResolvedModel("framework", path, label, found)
    raise ModelLoadError(
        f"{path}: unknown model format '{suffix or 'no suffix'}' (deployable: .onnx, .gguf, "
        f"OpenVINO .xml, an artifact (.vmm, .vmm.zip), a Hugging Face folder, "
        f"{', '.join(FRAMEWORK_SUFFIXES)})"
    )


def _head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def read_hf_config(path: Path) -> dict[str, Any]:
    """A Hugging Face folder's ``config.json``.

    Raises:
        ModelLoadError: unreadable or not a JSON object.
    """
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path / 'config.json'} is not readable JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path / 'config.json'} does not hold a JSON object")
    return config


def _hf_kind(path: Path) -> str:
    architectures = read_hf_config(path).get("architectures") or []
    causal = any(str(a).endswith(CAUSAL_SUFFIXES) for a in architectures)
    return "causal-lm" if causal else "hf-model"


def _from_hf_cache(text: str, roots: list[Path], searched: list[str]) -> ResolvedModel | None:
    repo, _, revision = text.partition("@")
    parts = [p for p in repo.split("/") if p]
    if not parts or len(parts) > 2 + 8 or any(p in (".", "..") for p in parts):
        return None
    # ORG/NAME, or NAME alone; anything after ORG/NAME is a file inside the snapshot.
    candidates = [(parts[:2], parts[2:])] if len(parts) >= 2 else []
    candidates.append((parts[:1], parts[1:]))
    for root in roots:
        for repo_parts, inner in candidates:
            folder = root / ("models--" + "--".join(repo_parts))
            snapshot = _snapshot(folder, revision or "main")
            if snapshot is None:
                searched.append(f"Hugging Face cache {folder} (absent)")
                continue
            target = snapshot.joinpath(*inner) if inner else snapshot
            where = f"Hugging Face cache {snapshot}"
            if inner:
                if not target.exists():
                    searched.append(f"{target} (absent)")
                    continue
                return _tagged(detect(target, where), text)
            return _tagged(_in_snapshot(snapshot, where), text)
    return None


def _tagged(resolved: ResolvedModel, model_id: str) -> ResolvedModel:
    resolved.model_id = model_id
    return resolved


def _snapshot(folder: Path, revision: str) -> Path | None:
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = folder / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        if (snapshots / commit).is_dir():
            return snapshots / commit
    if (snapshots / revision).is_dir():
        return snapshots / revision
    if revision != "main":
        return None
    found = [p for p in snapshots.iterdir() if p.is_dir()]
    # No refs/main (a cache filled by hand): the most recently written snapshot.
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _in_snapshot(snapshot: Path, where: str) -> ResolvedModel:
    if (snapshot / "config.json").is_file():
        return detect(snapshot, where)
    ggufs = sorted(snapshot.rglob("*.gguf"))
    if len(ggufs) == 1:
        return detect(ggufs[0], where)
    if ggufs:
        names = ", ".join(str(g.relative_to(snapshot)) for g in ggufs[:6])
        raise ModelLoadError(
            f"{snapshot} holds several GGUF files ({names}): name one, e.g. ID/{ggufs[0].name}"
        )
    onnx = [p for p in (snapshot / "model.onnx", snapshot / "onnx" / "model.onnx") if p.is_file()]
    if onnx:
        return detect(onnx[0], where)
    raise ModelLoadError(
        f"{snapshot} holds no config.json, .gguf or model.onnx: nothing ai-vmm can deploy"
    )


def _resolve_object(model: Any) -> ResolvedModel:
    classes = {f"{c.__module__}.{c.__qualname__}" for c in type(model).__mro__}
    label = f"<{type(model).__qualname__}>"
    if any(name.endswith("ModelProto") for name in classes):
        return ResolvedModel("onnx-proto", model, label, "object")
    if "torch.nn.modules.module.Module" in classes:
        config = getattr(model, "config", None)
        architectures = getattr(config, "architectures", None) or []
        if any(name.endswith(CAUSAL_SUFFIXES) for name in classes) or any(
            str(a).endswith(CAUSAL_SUFFIXES) for a in architectures
        ):
            return ResolvedModel("causal-lm", model, label, "object")
        return ResolvedModel("torch-module", model, label, "object")
    return ResolvedModel("framework", model, label, "object")


# --------------------------------------------------------------------------------------------
# Digests: what the store keys a model by
# --------------------------------------------------------------------------------------------


def model_digest(resolved: ResolvedModel) -> str:
    """sha256 of what defines the model: its files' bytes, or a module's weights and class."""
    digest = hashlib.sha256(resolved.kind.encode())
    source = resolved.source
    if isinstance(source, str | Path):
        path = Path(source)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        if resolved.kind == "openvino-ir":
            files = [path, path.with_suffix(".bin")]
        for file in files:
            # A single file is keyed by its bytes alone; a folder by relative paths and bytes.
            rel = file.suffix if path.is_file() else file.relative_to(path).as_posix()
            digest.update(rel.encode() + b"\0")
            _update_file(digest, file)
        return digest.hexdigest()
    if resolved.kind == "onnx-proto":
        digest.update(source.SerializeToString(deterministic=True))
        return digest.hexdigest()
    if resolved.kind in ("torch-module", "causal-lm"):
        digest.update(f"{type(source).__module__}.{type(source).__qualname__}".encode())
        for name, tensor in sorted(source.state_dict().items()):
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            digest.update(_tensor_bytes(tensor))
        return digest.hexdigest()
    raise ModelLoadError(
        f"cannot key a {type(source).__qualname__} for the deployment store: save it to a file "
        "(Keras: model.save('m.keras')) and deploy the path"
    )


def _tensor_bytes(tensor: Any) -> bytes:
    """A torch tensor's raw bytes, whatever its dtype (bfloat16 has no NumPy twin)."""
    import torch

    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return bytes(flat.view(torch.uint8).numpy().tobytes())


def _update_file(digest: Any, path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
