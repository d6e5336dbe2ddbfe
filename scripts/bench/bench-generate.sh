#!/usr/bin/env bash
# Benchmark (not a test): seconds per image and peak RSS of `generate` against diffusers'
# StableDiffusionPipeline in the same run, 20 steps, fp32, CPU, same seed (the images must be
# equal). usage: scripts/bench/bench-generate.sh [tiny|sd15] ...
set -euo pipefail
cd "$(dirname "$0")/../.."
py=$(scripts/dev/python-env.sh)
scripts/cargo.sh build --release --quiet
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
prompt="a photo of an astronaut riding a horse on mars"
for which in "${@:-tiny}"; do
  case $which in
    tiny) model=fixtures/tiny-sd; size=64 ;;
    sd15) model="$cache/bench/sd15-random"; size=512
          [[ -f "$model/.complete" ]] || scripts/bench/bench-models.sh >/dev/null ;;
    *) echo "unknown model $which" >&2; exit 2 ;;
  esac
  out=$(mktemp -d)
  "$py" scripts/bench/bench_generate.py "$model" 20 "$size" "$prompt" 1234 > "$out/py.json"
  /usr/bin/time -f "%e %M" -o "$out/time" target/release/textual-inversion generate --pretrained_model_name_or_path "$model" \
    --prompt "$prompt" --num_inference_steps 20 --height "$size" --width "$size" --seed 1234 --output_dir "$out" 2> "$out/log"
  "$py" - "$out" "$which" <<'PY'
import json, re, sys, numpy as np
from PIL import Image
d, which = sys.argv[1], sys.argv[2]
py = json.load(open(f"{d}/py.json"))
wall, rss_kb = open(f"{d}/time").read().split()
log = open(f"{d}/log").read()
gen = float(re.search(r"generated 1 image\(s\) in ([0-9.]+) s", log).group(1))
load = float(re.search(r"loaded .* in ([0-9.]+) s", log).group(1))
ours = np.asarray(Image.open(f"{d}/0000-1234.png")).astype(int)
ref = np.asarray(Image.open("/tmp/bench-generate-diffusers.png")).astype(int)
print(f"### {which} ({py['threads']} threads)")
print("| | diffusers | textual-inversion | ratio |\n|---|---|---|---|")
for label, a, b in [("load (s)", py["load_s"], load), ("20 steps + decode (s/image)", py["generate_s"], gen),
                    ("whole command incl. start-up (s)", py["total_s"], float(wall)),
                    ("peak RSS (MB)", py["peak_rss_mb"], int(rss_kb) / 1024)]:
    print(f"| {label} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
print(f"images: max pixel difference {np.abs(ours - ref).max()} / 255")
PY
done
