#!/usr/bin/env bash
# Generation speed side by side (not a test): diffusers' from_single_file pipeline and ours on
# the single-file checkpoints of bench-single-file.sh (made once), alternating the two REPEATS
# times in one run: seconds per image (the pipeline call / our generate, load excluded), medians
# and their ratio, plus the load average at the start.
# usage: scripts/bench/bench-generate-speed.sh [SIZE STEPS REPEATS [TYPES...]]   (default 256 4 3 v1 v2 xl_base)
set -euo pipefail
cd "$(dirname "$0")/../.."
size=${1:-256}; steps=${2:-4}; reps=${3:-3}; shift 3 2>/dev/null || true
types=("$@"); [[ ${#types[@]} -gt 0 ]] || types=(v1 v2 xl_base)
py=$(scripts/dev/python-env.sh)
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
scripts/cargo.sh build --release --quiet
ti=target/release/textual-inversion
out=$(mktemp -d)
echo "### Generation, ${size} px, ${steps} steps, median of ${reps} alternating runs (load average at start: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "| model | s per image: diffusers | ours | ratio |"
echo "|---|---|---|---|"
for t in "${types[@]}"; do
  model="$cache/bench/single-file-$t"
  [[ -f "$model.safetensors" && -d "$model" ]] || { echo "making $model (once)" >&2; "$py" scripts/bench/bench_single_file.py make "$t" "$model" >&2; }
  for r in $(seq "$reps"); do
    HF_HUB_OFFLINE=1 "$py" scripts/bench/bench_single_file.py run "$t" "$model.safetensors" "$model" "$size" "$steps" "$out/img.safetensors" > "$out/$t-py-$r.json" 2> /dev/null
    XDG_CACHE_HOME="$out/cache" "$ti" generate --pretrained_model_name_or_path "$model.safetensors" --prompt "a photo of a cat" --height "$size" --width "$size" \
      --num_inference_steps "$steps" --seed 0 --output_dir "$out/$t-rs-$r" --stats_json "$out/$t-rs-$r.json" > /dev/null 2>&1
  done
  "$py" - "$out" "$t" "$reps" <<'PY'
import json, statistics, sys
from pathlib import Path
d, t, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
py = statistics.median(json.loads((d / f"{t}-py-{r}.json").read_text())["generate_s"] for r in range(1, n + 1))
rs = statistics.median(json.loads((d / f"{t}-rs-{r}.json").read_text())["s_per_image"] for r in range(1, n + 1))
print(f"| {t} | {py:.2f} | {rs:.2f} | {rs / py:.2f}x |")
PY
done
rm -rf "$out"
