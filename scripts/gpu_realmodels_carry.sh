#!/usr/bin/env bash
# Copies real models and the data their inputs are made from into .realmodels/ (git-ignored)
# for a device call's carry (64 MiB at most, without the .whl wheels: the cuda target needs
# none of them). Run in the repository root after the real-model cache is filled
# (python models/realmodels.py fetch). Then, on the device:
#   bash scripts/gpu_all.sh OUT real      (carry: [".realmodels"])
set -euo pipefail
CACHE=${AI_VMM_REALMODELS:-$HOME/.cache/ai-vmm/realmodels}
# DIR: another folder (git-ignored too) to prepare several calls' carries ahead, each then
# moved to .realmodels on the device (a warm machine is given back 30 s after a call).
DIR=${REALMODELS_DIR:-.realmodels}
grep -qx "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >> .git/info/exclude
rm -rf "$DIR" && mkdir -p "$DIR"
# ~46 MB: a DB text detector (Resize), a recogniser (opset-12 Softmax), a YOLOv8 detector
# (anchors from a float Range), Silero VAD (LSTM, reflect Pad), Magika (jax2tf int32 shapes),
# Smart Turn (QDQ), openWakeWord's embedding (convolutions), PP-OCR's classifier.
# REALMODELS_FILES replaces the list. Models over 32 MB travel packed (scripts/carry_pack.py:
# byte planes, xz; gpu_all.sh unpacks them): ddddocr's 54 MB model becomes 45 MB, MiniLM-L3's
# 69 MB 58 MB, each alone (REALMODELS_FILES="ddddocr_common.onnx data_page.png data_text.png").
DEFAULT_FILES="ppocr_v4_det.onnx ppocr_v4_rec.onnx nudenet_320n.onnx silero_vad_16k_sequence.onnx
    magika_standard_v3_3.onnx smart_turn_v3_2.onnx oww_embedding.onnx oww_melspectrogram.onnx
    ppocr_mobile_v2_cls.onnx chars2vec_en_300.onnx data_page.png data_coffee.png
    data_astronaut.png pyannote_sample.wav magika_standard_v3_3.config.json
    bert_uncased_tokenizer.json chars2vec_en_300.model.pkl"
for file in ${REALMODELS_FILES:-$DEFAULT_FILES}; do
    if [ "$(stat -c %s "$CACHE/$file")" -gt 33554432 ]; then
        python3 scripts/carry_pack.py pack "$CACHE/$file" "$DIR/$file.bs4.xz"
    else
        cp "$CACHE/$file" "$DIR/"
    fi
done
# The project's own dependencies the device image lacks and the real part needs (the manifest is
# validated with jsonschema): the same wheels scripts/gpu_wheels.sh fetches, without OpenVINO.
bash scripts/gpu_download_wheels.sh "$DIR/wheels" \
    "jsonschema==$(python3 -c 'import importlib.metadata as m; print(m.version("jsonschema"))')" \
    jsonschema-specifications referencing rpds-py
du -sh "$DIR"
