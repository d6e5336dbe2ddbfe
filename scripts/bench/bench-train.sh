#!/usr/bin/env bash
# Benchmark (not a test): seconds per step and peak RSS of `train` against diffusers'
# textual_inversion.py in the same run, batch 1, fp32, CPU.
# usage: scripts/bench/bench-train.sh [tiny|sd15] ...   (tiny: 64 px, 30 steps; sd15: 512 px, 4 steps)
# Needs the Python script: TI_SCRIPT=path/to/examples/textual_inversion/textual_inversion.py
# (default: the copy scripts/fixtures/make_fixtures_train.py caches).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=$(scripts/dev/python-env.sh)
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
script=${TI_SCRIPT:-$cache/diffusers-examples/textual_inversion.py}
[[ -f "$script" ]] || { echo "no textual_inversion.py at $script: set TI_SCRIPT" >&2; exit 2; }
scripts/cargo.sh build --release --quiet
for which in "${@:-tiny}"; do
  case $which in
    tiny) model=fixtures/tiny-sd; res=64; steps=30 ;;
    sd15) model="$cache/bench/sd15-random"; res=512; steps=4
          [[ -f "$model/.complete" ]] || scripts/bench/bench-models.sh >/dev/null ;;
    *) echo "unknown model $which" >&2; exit 2 ;;
  esac
  out=$(mktemp -d)
  common=(--pretrained_model_name_or_path "$model" --train_data_dir fixtures/dataset/images
    --placeholder_token "<cat-toy>" --initializer_token toy --resolution "$res" --train_batch_size 1
    --max_train_steps "$steps" --learning_rate 5e-4 --lr_warmup_steps 0 --seed 0
    --save_steps 100000 --checkpointing_steps 100000)
  "$py" scripts/bench/bench_train.py "$script" -- "${common[@]}" --output_dir "$out/py" 2>"$out/py.log" | tail -1 > "$out/py.json"
  /usr/bin/time -f "%e %M" -o "$out/time" target/release/textual-inversion train "${common[@]}" --report_to none \
    --output_dir "$out/rs" 2> "$out/rs.log"
  "$py" - "$out" "$which" <<'PY'
import json, statistics, sys
d, which = sys.argv[1], sys.argv[2]
py = json.load(open(f"{d}/py.json"))
wall, rss_kb = open(f"{d}/time").read().split()
el = [json.loads(l)["elapsed_s"] for l in open(f"{d}/rs/metrics.jsonl")]
rs_step = statistics.median([b - a for a, b in zip(el, el[1:])])
print(f"### {which} ({py['threads']} threads, {py['steps']} steps)")
print("| | textual_inversion.py | textual-inversion | ratio |\n|---|---|---|---|")
print(f"| s/step (median) | {py['s_per_step']:.3f} | {rs_step:.3f} | {rs_step / py['s_per_step']:.2f}x |")
print(f"| start-up to first step (s) | {py['startup_s']:.1f} | {float(wall) - el[-1]:.1f} | |")
print(f"| whole run (s) | {py['total_s']:.1f} | {float(wall):.1f} | {float(wall) / py['total_s']:.2f}x |")
print(f"| peak RSS (MB) | {py['peak_rss_mb']:.0f} | {int(rss_kb) / 1024:.0f} | {int(rss_kb) / 1024 / py['peak_rss_mb']:.2f}x |")
PY
done
