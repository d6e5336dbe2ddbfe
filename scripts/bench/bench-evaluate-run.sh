#!/usr/bin/env bash
# Benchmark (not a test): the cost of `evaluate --run` per evaluated step on SD 1.5-shaped
# random weights at 512 px with a ViT-L/14-shaped CLIP (both made once by bench-models.sh and
# bench-evaluate.sh, kept in the cache), fp32, CPU. A fake run of two saved steps (random
# 768-wide rows); 2 prompts x 1 image x 2 denoising steps per step. The second step's time
# (printed in the log as "step 2: ... (S s)") has no loading in it.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=$(scripts/dev/python-env.sh)
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
[[ -f "$cache/bench/sd15-random/.complete" ]] || scripts/bench/bench-models.sh >/dev/null
[[ -f "$cache/bench/clip-vit-l14-random/.complete" ]] || scripts/bench/bench-evaluate.sh >/dev/null
scripts/cargo.sh build --release --quiet
out=$(mktemp -d)
mkdir -p "$out/run"
"$py" - "$out/run" <<'PY'
import sys, torch
from safetensors.torch import save_file
g = torch.Generator().manual_seed(0)
for s in (1, 2):
    save_file({"<x>": torch.randn(1, 768, generator=g) * 0.01}, f"{sys.argv[1]}/learned_embeds-steps-{s}.safetensors", metadata={"format": "pt"})
PY
/usr/bin/time -f "%e s, peak RSS %M KB" target/release/textual-inversion evaluate --run "$out/run" \
  --pretrained_model_name_or_path "$cache/bench/sd15-random" --clip_model "$cache/bench/clip-vit-l14-random" \
  --reference_dir fixtures/dataset/images --num_images 1 --num_inference_steps 2 \
  --editing_prompt "a photo of a {} on the beach" --output_dir "$out/eval" 2>&1 | grep -E "loaded .* in|step [0-9]+:|peak RSS"
