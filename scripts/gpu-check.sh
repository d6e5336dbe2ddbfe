#!/usr/bin/env bash
# Everything a CUDA box must answer, in one command: `info`; generate and train on SD 1.5-shaped
# random weights at 512 px in fp16 and bf16, ours against diffusers' StableDiffusionPipeline and
# textual_inversion.py on the same GPU (seconds per image/step, peak GPU memory), the loss curve
# against a CPU run of the same seed, whether the learned rows moved. Results: DIR/gpu-check.json
# and DIR/gpu-check.log. `--cpu-smoke` runs the same on the CPU with the tiny model (CI runs it),
# so that the first GPU call cannot fail on a typo.
#
# usage: scripts/gpu-check.sh [--out DIR] [--cpu-smoke] [--bin PATH] [--python PY|none]
#                             [--script textual_inversion.py] [--time-limit SECONDS]
# On a GPU box without diffusers, carry its wheel in .whl/ (see docs/install.md, "Check a GPU"): it is
# installed into a private folder first. The binary: --bin, else target/release/textual-inversion.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ti-gpu-site .whl/*.whl
  export PYTHONPATH=/tmp/ti-gpu-site${PYTHONPATH:+:$PYTHONPATH}
fi
exec python3 scripts/gpu/gpu_check.py "$@"
