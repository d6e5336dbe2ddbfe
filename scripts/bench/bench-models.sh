#!/usr/bin/env bash
# Benchmark (not a test): an SD 1.5-shaped model with random weights (made by diffusers from
# SD 1.5's configs, about 4.3 GB, kept in the cache, never committed), loaded and run once at
# 512 px by diffusers and by this tool in the same run. fp32, CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=$(scripts/dev/python-env.sh)
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
model="$cache/bench/sd15-random"
if [[ ! -f "$model/.complete" ]]; then
  echo "making $model (random SD 1.5-shaped weights, once)" >&2
  rm -rf "$model"; mkdir -p "$model"
  "$py" scripts/bench/bench_models.py make "$model"
fi
scripts/cargo.sh build --release --quiet --example bench_models
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
"$py" scripts/bench/bench_models.py run "$model" /tmp/bench-unet-io.safetensors > /tmp/bench-diffusers.json
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
target/release/examples/bench_models "$model" /tmp/bench-unet-io.safetensors > /tmp/bench-rust.json
"$py" - /tmp/bench-diffusers.json /tmp/bench-rust.json <<'PY'
import json, sys
py, rs = (json.load(open(f)) for f in sys.argv[1:3])
rows = [("load UNet (s)", "load_unet_s"), ("load VAE (s)", "load_vae_s"), ("load text encoder (s)", "load_text_encoder_s"),
        ("load all three (s)", "load_total_s"), ("peak RSS after load (MB)", "peak_rss_after_load_mb"),
        ("UNet forward 512 px (s, best of 2)", "unet_forward_s"), ("peak RSS (MB)", "peak_rss_mb")]
print(f"| | diffusers {py['threads']} threads | textual-inversion | ratio |")
print("|---|---|---|---|")
for label, k in rows:
    print(f"| {label} | {py[k]:.2f} | {rs[k]:.2f} | {rs[k] / py[k]:.2f}x |")
print(f"(Python import of diffusers/transformers: {py['import_s']:.1f} s, not counted above; "
      f"UNet output max abs difference from diffusers: {rs['unet_max_abs_vs_diffusers']:.2e})")
PY
