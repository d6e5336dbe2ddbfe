#!/usr/bin/env bash
# Benchmark (not a test): peak memory (RSS) and seconds per step of `train` at 512 px on the SD
# 1.5-shaped random model, fp32, CPU, batch 1, for each memory option, with the Python script's
# default run measured in the same run. usage: scripts/bench/bench-train-memory.sh [STEPS]
# Needs the Python script (TI_SCRIPT, default the copy scripts/fixtures/make_fixtures_train.py
# caches); TI_BENCH_NO_PYTHON=1 skips its row.
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-3}
py=$(scripts/dev/python-env.sh)
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
script=${TI_SCRIPT:-$cache/diffusers-examples/textual_inversion.py}
model="$cache/bench/sd15-random"
[[ -f "$model/.complete" ]] || { echo "making $model (random SD 1.5-shaped weights, once)" >&2; rm -rf "$model"; mkdir -p "$model"; "$py" scripts/bench/bench_models.py make "$model"; }
scripts/cargo.sh build --release --quiet
out=$(mktemp -d)
common=(--pretrained_model_name_or_path "$model" --train_data_dir fixtures/dataset/images
  --placeholder_token "<cat-toy>" --initializer_token toy --resolution 512 --train_batch_size 1 --repeats 1
  --max_train_steps "$steps" --learning_rate 5e-4 --lr_warmup_steps 0 --seed 0
  --save_steps 100000 --checkpointing_steps 100000)
run() { # name, extra flags...
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$out/$name.time" target/release/textual-inversion train "${common[@]}" --report_to none \
    --output_dir "$out/$name" "$@" 2> "$out/$name.log"
}
run script-like --no_cache_latents --validation_prompt "a <cat-toy>" --validation_steps 100000
run cached-vae-kept --validation_prompt "a <cat-toy>" --validation_steps 100000
run default
run gradient-checkpointing --gradient_checkpointing
if [[ -z "${TI_BENCH_NO_PYTHON:-}" && -f "$script" ]]; then
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  "$py" scripts/bench/bench_train.py "$script" -- "${common[@]}" --output_dir "$out/py" 2>"$out/py.log" | tail -1 > "$out/py.json"
fi
"$py" - "$out" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
rows = [("script-like", "VAE encode every step (`--no_cache_latents`), whole VAE kept"),
        ("cached-vae-kept", "latents cached, VAE decoder kept (validation on)"),
        ("default", "latents cached, VAE freed (the default without validation)"),
        ("gradient-checkpointing", "default + `--gradient_checkpointing`")]
py = json.load(open(f"{d}/py.json")) if os.path.exists(f"{d}/py.json") else None
print("| run | peak RSS (MB) | vs script | s/step (median) | vs script |\n|---|---|---|---|---|")
if py:
    print(f"| textual_inversion.py (Python, default) | {py['peak_rss_mb']:.0f} | 1.00x | {py['s_per_step']:.2f} | 1.00x |")
for name, what in rows:
    wall, rss_kb = open(f"{d}/{name}.time").read().split()
    el = [json.loads(l)["elapsed_s"] for l in open(f"{d}/{name}/metrics.jsonl")]
    step = statistics.median([b - a for a, b in zip(el, el[1:])]) if len(el) > 1 else float("nan")
    rss = int(rss_kb) / 1024
    ratio = lambda a, b: f"{a / b:.2f}x" if py else "-"
    print(f"| {what} | {rss:.0f} | {ratio(rss, py['peak_rss_mb']) if py else '-'} | {step:.2f} | {ratio(step, py['s_per_step']) if py else '-'} |")
PY
