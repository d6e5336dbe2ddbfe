#!/usr/bin/env bash
# Benchmark and real-shape check (not a test): single-file checkpoints of SD 1.5's, SD 2.1's and
# SDXL base's shapes (random float16 weights for the bundled configs, made once), read by us with
# NO --config (so the bundled configs and the key mapping meet every real tensor name and shape)
# and by diffusers' from_single_file(config=the same folder), in the same run: load seconds,
# seconds per image, peak RSS, and the largest pixel difference of the two images; ours from the
# diffusers folder of the same weights must give our single-file image exactly.
# usage: scripts/bench/bench-single-file.sh [SIZE STEPS [TYPES...]]   (default 256 4 v1 v2 xl_base)
set -euo pipefail
cd "$(dirname "$0")/../.."
size=${1:-256}; steps=${2:-4}; shift 2 2>/dev/null || true
types=("$@"); [[ ${#types[@]} -gt 0 ]] || types=(v1 v2 xl_base)
py=$(scripts/dev/python-env.sh)
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
scripts/cargo.sh build --release --quiet
ti=target/release/textual-inversion
out=$(mktemp -d)
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
echo "### Single-file checkpoints, real shapes, fp32 on the CPU, ${size} px, ${steps} steps"
echo "| model | load s (diffusers / ours) | s per image (diffusers / ours) | peak RSS MB (diffusers / ours) | image diff | ours: file vs folder |"
echo "|---|---|---|---|---|---|"
for t in "${types[@]}"; do
  model="$cache/bench/single-file-$t"
  [[ -f "$model.safetensors" && -d "$model" ]] || { echo "making $model (once)" >&2; "$py" scripts/bench/bench_single_file.py make "$t" "$model" >&2; }
  drop; HF_HUB_OFFLINE=1 "$py" scripts/bench/bench_single_file.py run "$t" "$model.safetensors" "$model" "$size" "$steps" "$out/$t-py.safetensors" > "$out/$t-py.json" 2> "$out/$t-py.log"
  gen=(--prompt "a photo of a cat" --height "$size" --width "$size" --num_inference_steps "$steps" --seed 0)
  drop; XDG_CACHE_HOME="$out/cache" /usr/bin/time -f "%e %M" -o "$out/$t-rs.time" "$ti" generate --pretrained_model_name_or_path "$model.safetensors" "${gen[@]}" \
    --output_dir "$out/$t-file" --stats_json "$out/$t-rs.json" > /dev/null 2> "$out/$t-rs.log"
  "$ti" generate --pretrained_model_name_or_path "$model" "${gen[@]}" --output_dir "$out/$t-folder" > /dev/null 2> "$out/$t-folder.log"
  "$py" - "$out" "$t" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
from safetensors.numpy import load_file
d, t = Path(sys.argv[1]), sys.argv[2]
py = json.loads((d / f"{t}-py.json").read_text()); rs = json.loads((d / f"{t}-rs.json").read_text())
rss = int((d / f"{t}-rs.time").read_text().split()[1]) / 1024
ours = np.asarray(Image.open(next((d / f"{t}-file").glob("*.png"))).convert("RGB")).astype(int)
folder = np.asarray(Image.open(next((d / f"{t}-folder").glob("*.png"))).convert("RGB")).astype(int)
theirs = load_file(str(d / f"{t}-py.safetensors"))["image"][0].astype(int)
diff = int(np.abs(ours - theirs).max()); same = "identical" if (ours == folder).all() else f"differs by {int(np.abs(ours - folder).max())}"
print(f"| {t} | {py['load_s']:.1f} / {rs['load_s']:.1f} | {py['generate_s']:.1f} / {rs['s_per_image']:.1f} | "
      f"{py['peak_rss_mb']:.0f} / {rss:.0f} | {diff}/255 | {same} |")
PY
done
