#!/usr/bin/env bash
# Prepares .whl/ for the device tool's GPU machine (Python 3.12, no package index there): the
# wheels the project needs that its image lacks, and .whl/setup.sh, which installs them and
# the project into /tmp/site (scripts/gpu_all.sh runs it first). Run here, in the repository
# root; then name `.whl` in the call's `carry` (about 61 MB with the project: under 64 MiB).
#
#   bash scripts/gpu_wheels.sh
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
# The image has torch, onnx, onnx-ir, onnxruntime, networkx, typer, rich, scipy, scikit-learn,
# transformers, accelerate...; it lacks these (checked 2026-12-04).
# The versions installed here (what the tests ran with), not the newest on the index.
here() { python3 -c "import importlib.metadata as m; print('$1==' + m.version('$1'))"; }
bash scripts/gpu_download_wheels.sh .whl \
    "openvino==$(python3 -c 'import openvino; print(openvino.__version__.split("-")[0])')" \
    "$(here nncf)" "$(here gguf)" "$(here jsonschema)" \
    openvino-telemetry pydot jsonschema-specifications referencing rpds-py
cat > .whl/setup.sh <<'SETUP'
#!/usr/bin/env bash
# Written by scripts/gpu_wheels.sh: the carried wheels, then the project, into /tmp/site;
# skipped when a warm machine already has this tree's install.
set -e
key=$(find compiler passes targets runtime deploy serve pyproject.toml .whl -type f | sort | xargs md5sum | md5sum)
if [ -f /tmp/site/.ready ] && [ "$(cat /tmp/site/.ready)" = "$key" ]; then
    echo "setup: already done"; exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target /tmp/site .
echo "$key" > /tmp/site/.ready
python3 -c "import sys; sys.path.insert(0, '/tmp/site'); import torch, openvino, ai_vmm; print('setup ok', torch.__version__, openvino.__version__, torch.cuda.get_device_name(0))"
SETUP
du -sh .whl
