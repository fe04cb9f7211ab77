"""A model repository: a directory of models or artifacts, with an optional config per model.

Layout (each line one way to add a model called ``NAME``)::

    REPO/serve.toml               # optional: server, classes, tenants, resources, [models.NAME]
    REPO/NAME.vmm/ | NAME.vmm.zip # a compiled artifact
    REPO/NAME.onnx | NAME.gguf    # a model file (deployed, i.e. compiled, at start-up)
    REPO/NAME/                    # a folder holding one artifact / model file / HF model,
    REPO/NAME/model.toml          #   its own config (the [models.NAME] keys),
    REPO/NAME/1/, REPO/NAME/2/    #   or numbered versions, each holding one model

A model's ``source`` (in its config) names the file or artifact explicitly, relative to the
model's folder, or to the repository for ``[models.NAME]`` tables. Names are checked against
``MODEL_NAME``: the server only ever looks models up by these names, never joins a request's
text into a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_vmm.serve.config import (
    MODEL_NAME,
    ModelConfig,
    ServeConfig,
    ServeConfigError,
    read_config_file,
    validate_config,
    validate_model_config,
)

SERVER_CONFIGS = ("serve.toml", "serve.json")
MODEL_CONFIGS = ("model.toml", "model.json")
_FILE_SUFFIXES = (".onnx", ".gguf", ".vmm.zip")


@dataclass(frozen=True)
class ModelSpec:
    """One model version the server will serve."""

    name: str
    version: str
    source: Path
    config: ModelConfig
    kind: str
    """``model`` or ``causal-lm`` (from the config, the artifact manifest or the file type)."""

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class Repository:
    """A parsed repository: the server config and every model version found."""

    root: Path
    config: ServeConfig
    models: tuple[ModelSpec, ...]

    def names(self) -> list[str]:
        return sorted({m.name for m in self.models})


def open_repository(
    root: str | Path, config: ServeConfig | dict[str, Any] | None = None
) -> Repository:
    """Read ``root``'s config and find its models.

    Args:
        root: the repository directory.
        config: a config to use instead of ``root/serve.toml`` (a ``ServeConfig`` or raw dict).

    Raises:
        ServeConfigError: the directory or a config is invalid, or a model is ambiguous.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ServeConfigError(f"model repository {base} is not a directory")
    if config is None:
        config = _read_server_config(base)
    elif not isinstance(config, ServeConfig):
        config = validate_config(config, "config")
    specs: list[ModelSpec] = []
    named_in_server = dict(config.models)
    for name, model_config in sorted(named_in_server.items()):
        folder = base / name
        if folder.is_dir() and any((folder / c).is_file() for c in MODEL_CONFIGS):
            raise ServeConfigError(
                f"model '{name}' is configured twice: [models.{name}] in the server config and "
                f"{folder}/model.toml; keep one"
            )
        if model_config.source is not None:
            entry: Path | None = _inside(base, model_config.source, f"[models.{name}].source")
            model_config = model_config.model_copy(update={"source": None})
        else:
            entry = folder if folder.exists() else _file_entry(base, name)
        if entry is None:
            raise ServeConfigError(
                f"[models.{name}] has no source and the repository holds no '{name}' entry"
            )
        specs += _versions(name, entry, model_config)
    for item in sorted(base.iterdir()):
        found = _entry_name(item)
        if found is None or found in named_in_server:
            continue
        if not MODEL_NAME.match(found):
            raise ServeConfigError(f"{item}: model name {found!r} must match {MODEL_NAME.pattern}")
        model_config = ModelConfig()
        if item.is_dir() and not _is_model_dir(item):
            model_config = _read_model_config(item) or model_config
        specs += _versions(found, item, model_config)
    seen: set[str] = set()
    for spec in specs:
        if spec.key in seen:
            raise ServeConfigError(
                f"model '{spec.name}' appears twice in {base} (e.g. NAME.onnx beside NAME.vmm); "
                "keep one or rename"
            )
        seen.add(spec.key)
    return Repository(base, config, tuple(specs))


def _read_server_config(base: Path) -> ServeConfig:
    found = [base / name for name in SERVER_CONFIGS if (base / name).is_file()]
    if len(found) > 1:
        raise ServeConfigError(f"{base} holds both serve.toml and serve.json; keep one")
    if not found:
        return ServeConfig()
    return validate_config(read_config_file(found[0]), str(found[0]))


def _read_model_config(folder: Path) -> ModelConfig | None:
    found = [folder / name for name in MODEL_CONFIGS if (folder / name).is_file()]
    if len(found) > 1:
        raise ServeConfigError(f"{folder} holds both model.toml and model.json; keep one")
    if not found:
        return None
    return validate_model_config(read_config_file(found[0]), str(found[0]))


def _entry_name(entry: Path) -> str | None:
    """The model name an entry of the repository root stands for, or None (not a model)."""
    if entry.name.startswith(".") or entry.name in SERVER_CONFIGS:
        return None
    if entry.is_dir():
        return entry.name.removesuffix(".vmm")
    for suffix in _FILE_SUFFIXES:
        if entry.name.endswith(suffix):
            return entry.name[: -len(suffix)]
    return None


def _file_entry(base: Path, name: str) -> Path | None:
    for suffix in (".vmm", *_FILE_SUFFIXES):
        path = base / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def _inside(base: Path, relative: str, where: str) -> Path:
    path = (base / relative).expanduser()
    if not path.exists():
        raise ServeConfigError(f"{where}: {path} does not exist")
    return path


def _is_model_dir(path: Path) -> bool:
    """An artifact directory or a Hugging Face model directory (a model in itself)."""
    if (path / "manifest.json").is_file():
        return True
    hf_config = path / "config.json"
    return hf_config.is_file() and any(path.glob("*.safetensors"))


def _versions(name: str, entry: Path, config: ModelConfig) -> list[ModelSpec]:
    """The versions of model ``name`` at ``entry`` that ``config`` says to serve."""
    if entry.is_dir() and not _is_model_dir(entry):
        numbered = sorted(
            (p for p in entry.iterdir() if p.is_dir() and p.name.isdigit()),
            key=lambda p: int(p.name),
        )
        if numbered:
            chosen = numbered if config.versions == "all" else numbered[-1:]
            return [
                ModelSpec(name, p.name, src, config, _kind(src, config))
                for p in chosen
                for src in [_single_source(p, config)]
            ]
        source = _single_source(entry, config)
    else:
        source = entry
    return [ModelSpec(name, "1", source, config, _kind(source, config))]


def _single_source(folder: Path, config: ModelConfig) -> Path:
    if config.source is not None:
        return _inside(folder, config.source, f"{folder}: source")
    if _is_model_dir(folder):
        return folder
    candidates = [
        p
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".")
        and p.name not in MODEL_CONFIGS
        and (p.name.endswith((".vmm", *_FILE_SUFFIXES)) or (p.is_dir() and _is_model_dir(p)))
    ]
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "nothing"
        raise ServeConfigError(
            f"{folder}: expected one model (.vmm, .vmm.zip, .onnx, .gguf or a model folder), "
            f'found {found}; name it with source = "..." in {folder}/model.toml'
        )
    return candidates[0]


def _kind(source: Path, config: ModelConfig) -> str:
    if config.kind != "auto":
        return config.kind
    if source.name.endswith(".gguf"):
        return "causal-lm"
    manifest = source / "manifest.json"
    if manifest.is_file():
        try:
            return str(json.loads(manifest.read_text()).get("kind", "model"))
        except (OSError, json.JSONDecodeError):
            return "model"  # the loader reports the broken artifact properly
    hf_config = source / "config.json"
    if source.is_dir() and hf_config.is_file():
        try:
            architectures = json.loads(hf_config.read_text()).get("architectures") or []
        except (OSError, json.JSONDecodeError):
            architectures = []
        if any(str(a).endswith("ForCausalLM") for a in architectures):
            return "causal-lm"
    return "model"


__all__ = ["ModelSpec", "Repository", "open_repository"]
