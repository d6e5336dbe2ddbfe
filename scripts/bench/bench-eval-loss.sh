#!/usr/bin/env bash
# Benchmark (not a test): the cost of `train --eval_loss_steps` per evaluation against a training
# step, on an SD 1.5-shaped model with random weights (scripts/bench/bench_models.py make), fp32,
# CPU, batch 1, the three images of fixtures/dataset/images (so an evaluation batch of 3).
# usage: scripts/bench/bench-eval-loss.sh [RESOLUTION]   (default 512; 5 steps, evaluated every 2)
set -euo pipefail
cd "$(dirname "$0")/../.."
py=$(scripts/dev/python-env.sh)
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
model="$cache/bench/sd15-random"
res=${1:-512}
if [[ ! -f "$model/.complete" ]]; then
  echo "making $model (random SD 1.5-shaped weights, once)" >&2
  rm -rf "$model"; mkdir -p "$model"
  "$py" scripts/bench/bench_models.py make "$model"
fi
scripts/cargo.sh build --release --quiet
out=$(mktemp -d)
RUST_LOG=textual_inversion=debug,info target/release/textual-inversion train --pretrained_model_name_or_path "$model" \
  --train_data_dir fixtures/dataset/images --sort_images --placeholder_token "<cat-toy>" --initializer_token toy \
  --resolution "$res" --train_batch_size 1 --max_train_steps 5 --learning_rate 5e-4 --seed 0 --report_to none \
  --save_steps 100000 --checkpointing_steps 100000 --eval_loss_steps 2 --output_dir "$out/rs" 2> "$out/rs.log"
"$py" - "$out" "$res" "$(nproc)" <<'PY'
import json, re, statistics, sys
d, res, cores = sys.argv[1:4]
recs = [json.loads(l) for l in open(f"{d}/rs/metrics.jsonl")]
gaps = [(b["elapsed_s"] - a["elapsed_s"], "eval_loss" in b) for a, b in zip(recs, recs[1:])]
step = statistics.median([g for g, e in gaps if not e])
with_eval = statistics.median([g for g, e in gaps if e])
evals = [(int(n), float(s)) for n, s in re.findall(r"eval_loss of (\d+) image\(s\) took ([0-9.]+) s", open(f"{d}/rs.log").read())]
n, ev = evals[0][0], statistics.median([s for _, s in evals])
print(f"### SD 1.5-shaped, {res} px, fp32, CPU ({cores} cores), batch 1, evaluation batch {n}")
print("| | seconds |\n|---|---|")
print(f"| training step (median, no evaluation) | {step:.2f} |")
print(f"| training step followed by an evaluation (median) | {with_eval:.2f} |")
print(f"| one evaluation ({n} images, median) | {ev:.2f} |")
print(f"| one evaluation per image | {ev / n:.2f} ({ev / n / step:.2f} of a training step) |")
PY
