#!/usr/bin/env bash
# Benchmark (not a test): SDXL-shaped random weights (SDXL base's configs, fp16 files, computed in
# fp32 on the CPU), ours against diffusers' StableDiffusionXLPipeline (generate: one image) and
# textual_inversion_sdxl.py (train: batch 1) in the same run: seconds and peak RSS.
# usage: scripts/bench/bench-sdxl.sh [GEN_SIZE GEN_STEPS TRAIN_SIZE TRAIN_STEPS]  (default 512 4 256 3)
# Needs TI_SDXL_SCRIPT=path/to/textual_inversion_sdxl.py (default: the cache's copy).
set -euo pipefail
cd "$(dirname "$0")/../.."
gen_size=${1:-512}; gen_steps=${2:-4}; train_size=${3:-256}; train_steps=${4:-3}
py=$(scripts/dev/python-env.sh)
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
script=${TI_SDXL_SCRIPT:-$cache/diffusers-examples/textual_inversion_sdxl.py}
model="$cache/bench/sdxl-random"
[[ -f "$model/.complete" ]] || { echo "making $model (random SDXL-shaped weights, fp16, once)" >&2; "$py" scripts/bench/bench_sdxl.py make "$model"; }
scripts/cargo.sh build --release --quiet
out=$(mktemp -d)
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
drop; "$py" scripts/bench/bench_sdxl.py generate "$model" "$gen_size" "$gen_steps" > "$out/py-gen.json" 2> "$out/py-gen.log"
drop; /usr/bin/time -f "%e %M" -o "$out/rs-gen.time" target/release/textual-inversion generate --model "$model" --prompt "a photo of a cat" \
  --height "$gen_size" --width "$gen_size" --num_inference_steps "$gen_steps" --seed 0 --output_dir "$out/images" --stats_json "$out/rs-gen.json" 2> "$out/rs-gen.log"
common=(--pretrained_model_name_or_path "$model" --train_data_dir fixtures/dataset/images --placeholder_token "<cat-toy>"
  --initializer_token toy --resolution "$train_size" --train_batch_size 1 --repeats 1 --max_train_steps "$train_steps"
  --learning_rate 5e-4 --lr_warmup_steps 0 --seed 0 --save_steps 100000 --checkpointing_steps 100000)
if [[ -f "$script" ]]; then
  drop; "$py" scripts/bench/bench_train.py "$script" -- "${common[@]}" --output_dir "$out/py-train" 2> "$out/py-train.log" | tail -1 > "$out/py-train.json"
fi
drop; /usr/bin/time -f "%e %M" -o "$out/rs-train.time" target/release/textual-inversion train "${common[@]}" --report_to none \
  --output_dir "$out/rs-train" --stats_json "$out/rs-train.json" 2> "$out/rs-train.log"
"$py" - "$out" "$gen_size" "$gen_steps" "$train_size" <<'PY'
import json, os, sys
d, gs, gsteps, ts = sys.argv[1:5]
pg = json.load(open(f"{d}/py-gen.json")); rg = json.load(open(f"{d}/rs-gen.json"))
rg_wall, rg_rss = open(f"{d}/rs-gen.time").read().split()
print(f"### SDXL-shaped, fp32, CPU ({pg['threads']} threads)")
print("| | diffusers / textual_inversion_sdxl.py | textual-inversion | ratio |\n|---|---|---|---|")
print(f"| generate {gs} px, {gsteps} steps: s per image | {pg['generate_s']:.1f} | {rg['s_per_image']:.1f} | {rg['s_per_image'] / pg['generate_s']:.2f}x |")
print(f"| generate: load (s) | {pg['load_s']:.1f} | {rg['load_s']:.1f} | {rg['load_s'] / pg['load_s']:.2f}x |")
print(f"| generate: peak RSS (MB) | {pg['peak_rss_mb']:.0f} | {int(rg_rss) / 1024:.0f} | {int(rg_rss) / 1024 / pg['peak_rss_mb']:.2f}x |")
rt = json.load(open(f"{d}/rs-train.json")); rt_wall, rt_rss = open(f"{d}/rs-train.time").read().split()
if os.path.exists(f"{d}/py-train.json") and os.path.getsize(f"{d}/py-train.json"):
    pt = json.load(open(f"{d}/py-train.json"))
    print(f"| train {ts} px: s/step (median) | {pt['s_per_step']:.1f} | {rt['s_per_micro_step']:.1f} | {rt['s_per_micro_step'] / pt['s_per_step']:.2f}x |")
    print(f"| train: whole run (s) | {pt['total_s']:.0f} | {float(rt_wall):.0f} | {float(rt_wall) / pt['total_s']:.2f}x |")
    print(f"| train: peak RSS (MB) | {pt['peak_rss_mb']:.0f} | {int(rt_rss) / 1024:.0f} | {int(rt_rss) / 1024 / pt['peak_rss_mb']:.2f}x |")
else:
    print(f"| train {ts} px: s/step (median) | - | {rt['s_per_micro_step']:.1f} | |")
PY
