"""The JSON Schema of ``manifest.json``, and the checks a schema cannot express.

A manifest is untrusted input: anyone can hand over a ``.vmm.zip``. ``validate_manifest`` runs
before a single field is used, and every complaint is one ``ArtifactError`` line naming the field.

Paths are the sharp edge. Every path in a manifest (each partition's ``entry`` and ``files``,
the ``assets``) must be relative, in normal form, inside the artifact, and listed with a sha256;
an ``entry`` must be one of its partition's hashed ``files``. So an artifact only ever makes a
runtime read its own files, each checked against its hash.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from ai_vmm.runtime.errors import ArtifactError

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_NAME = {"type": "string"}
_NAMES = {"type": "array", "items": _NAME}
_COUNT = {"type": "integer", "minimum": 0}
_RANGE = {
    "type": "object",
    "properties": {"min": _COUNT, "max": _COUNT},
    "additionalProperties": False,
}
_DIM = {"anyOf": [_COUNT, {"type": "string"}, _RANGE, {"type": "null"}]}
_TENSOR = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "dtype": {"type": "string"},
        "shape": {"anyOf": [{"type": "null"}, {"type": "array", "items": _DIM}]},
        "kind": {"enum": ["tensor", "sequence", "optional", "map", "other"]},
    },
}
_HASHED_FILES = {
    "type": "object",
    "propertyNames": {"type": "string", "minLength": 1},
    "additionalProperties": _SHA256,
}

# What each executor reads from a partition's ``config`` (runtime/executors/*): the types it
# needs. Keys not listed are free (targets may record notes there).
_CONFIG_COMMON = {"deferred": {"type": "string"}}
_CUDA_INPUTS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": _NAME,
            "shape": {"anyOf": [{"type": "null"}, {"type": "array", "items": _DIM}]},
        },
    },
}
_CONFIGS: dict[str, dict[str, Any]] = {
    "onnxruntime": {
        "graph_optimization_level": {"enum": ["disable", "basic", "extended", "all"]},
        "intra_op_num_threads": _COUNT,
        "force_spinning_stop": {"type": "boolean"},
    },
    "openvino": {
        "performance_hint": {"type": "string"},
        "inference_precision": {"type": "string"},
        "num_streams": {"anyOf": [_COUNT, {"type": "string"}]},
        "inference_num_threads": _COUNT,
        # causal-lm decoders (runtime/executors/openvino_lm.py): the KV cache as the model's
        # state, or in blocks through PagedAttention (runtime/executors/openvino_paged.py)
        "attention": {"enum": ["stateful", "paged"]},
    },
    "cuda": {
        "device_type": {"type": "string"},
        "precision": {"type": "string"},
        "inputs": _CUDA_INPUTS,
        # Static-batch packages beside the entry (targets/cuda_static.py): plain file names.
        "static_dispatch": {"type": "boolean"},
        "static_batches": {
            "type": "object",
            "propertyNames": {"pattern": "^[0-9]{1,6}$"},
            "additionalProperties": {
                "type": "object",
                "required": ["entry", "inputs"],
                "properties": {
                    "entry": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"},
                    "inputs": _CUDA_INPUTS,
                    "cuda_graphs": {"type": "boolean"},
                },
            },
        },
        # A batch below the package's least one padded up to it (targets/cuda_checks.py):
        # each padded input's and each output's batch axis.
        "pad_batch": {
            "type": "object",
            "required": ["from", "to"],
            "properties": {
                "from": {"type": "integer", "minimum": 1},
                "to": {"type": "integer", "minimum": 2},
                "inputs": {"type": "object", "additionalProperties": _COUNT},
                "outputs": {"type": "object", "additionalProperties": _COUNT},
            },
            "additionalProperties": False,
        },
        "device_outputs": _NAMES,
        "cuda_graphs": {"type": "boolean"},
        "torch": {"type": "string"},
        "compute_capability": {"type": "string"},
        "gpu": {"type": "string"},
        # "eager": the exported program where AOTInductor failed (targets/cuda_build.py)
        "runner": {"enum": ["aoti", "eager"]},
        # causal-lm decoders (runtime/executors/cuda_lm.py): steps over a window of the
        # static cache, grouped-query attention, decode steps through Inductor or not
        "max_cache_len": _COUNT,
        "window": {"type": "boolean"},
        "attention": {"enum": ["grouped", "sdpa"]},
        "decode_compile": {"enum": ["none", "inductor"]},
    },
    "tensorrt": {"precision": {"type": "string"}},
}


_PARTITION: dict[str, Any] = {
    "type": "object",
    "required": ["id", "target", "device", "entry", "files", "inputs", "outputs"],
    "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        "target": {"type": "string", "minLength": 1},
        "device": {"type": "string"},
        "entry": {"type": "string", "minLength": 1},
        "files": {**_HASHED_FILES, "minProperties": 1},
        "inputs": _NAMES,
        "outputs": _NAMES,
        "config": {"type": "object", "properties": _CONFIG_COMMON},
    },
    # A known target's partition must give its executor config values of the right types; an
    # unknown target name is refused by ``create_executor``, by name.
    "allOf": [
        {
            "if": {"properties": {"target": {"const": target}}, "required": ["target"]},
            "then": {"properties": {"config": {"type": "object", "properties": keys}}},
        }
        for target, keys in sorted(_CONFIGS.items())
    ],
}


MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ai-vmm artifact manifest",
    "type": "object",
    "required": [
        "format",
        "format_version",
        "inputs",
        "outputs",
        "partitions",
        "compile_options",
        "toolchain",
        "source",
    ],
    "properties": {
        "format": {"const": "ai-vmm-artifact"},
        "format_version": {"type": "integer", "minimum": 1},
        "kind": {"type": "string", "minLength": 1},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": _TENSOR},
        "partitions": {"type": "array", "items": _PARTITION},
        "routing": {"type": "array"},
        "compile_options": {"type": "object"},
        "toolchain": {"type": "object", "additionalProperties": {"type": "string"}},
        "source": {"type": "object"},
        "plans": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "partitions"],
                "properties": {
                    "id": _NAME,
                    "partitions": {"type": "array", "items": _NAME, "minItems": 1},
                    "when": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "propertyNames": {"pattern": "^[0-9]+$"},
                            "additionalProperties": {**_RANGE, "required": ["min", "max"]},
                        },
                    },
                },
            },
        },
        "assets": _HASHED_FILES,
        "llm": {"type": "object"},
    },
}

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def validate_manifest(data: Any) -> None:
    """Check a parsed ``manifest.json`` against the schema and the path rules.

    Raises:
        ArtifactError: one line naming the first field that is wrong and why.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ArtifactError(f"manifest.json is malformed at {where}: {_short(error.message)}")
    _check_references(data)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_member_path(path: str, what: str) -> str:
    """``path`` if it is relative, normalised and inside the artifact; else an ``ArtifactError``."""
    bad = (
        not path
        or "\\" in path
        or "\x00" in path
        or path.startswith("/")
        or _WINDOWS_DRIVE.match(path) is not None
        or posixpath.normpath(path) != path
        or any(part in ("", ".", "..") for part in path.split("/"))
        or path in ("manifest.json", "report.json")
    )
    if bad:
        raise ArtifactError(
            f"manifest.json: {what} {_short(repr(path), 80)} is not a relative path inside the "
            f"artifact; the artifact is corrupt or was tampered with"
        )
    return path


def _check_references(data: dict[str, Any]) -> None:
    ids: set[str] = set()
    for part in data["partitions"]:
        pid = part["id"]
        if pid in ids:
            raise ArtifactError(f"manifest.json: partition id '{pid}' appears twice")
        ids.add(pid)
        for rel in part["files"]:
            check_member_path(rel, f"partition {pid} file")
        entry = check_member_path(part["entry"], f"partition {pid} entry")
        if entry not in part["files"]:
            raise ArtifactError(
                f"manifest.json: partition {pid} entry {_short(repr(entry), 80)} is not one of "
                f"its hashed files; the artifact is corrupt or was tampered with"
            )
    for rel in data.get("assets", {}):
        check_member_path(rel, "asset")
    kind = data.get("kind", "model")
    if kind == "model" and not ids:
        raise ArtifactError("manifest.json has no partitions: there is nothing to run; recompile")
    for plan in data.get("plans", []):
        unknown = [p for p in plan["partitions"] if p not in ids]
        if unknown:
            raise ArtifactError(
                f"manifest.json: plan '{plan['id']}' names unknown partition "
                f"{_short(repr(unknown[0]), 80)}"
            )
