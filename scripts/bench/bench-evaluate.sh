#!/usr/bin/env bash
# Benchmark (not a test): `textual-inversion evaluate` with a CLIPModel shaped as
# openai/clip-vit-large-patch14 (random weights made by transformers, about 1.7 GB, kept in the
# cache, never committed), scoring 8 images at 512 px against 8 references and one text, next to
# transformers doing the same in the same run. fp32, CPU; threads as each library defaults.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=$(scripts/dev/python-env.sh)
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
model="$cache/bench/clip-vit-l14-random"
images="$cache/bench/clip-eval-images"
if [[ ! -f "$model/.complete" ]]; then
  echo "making $model (random ViT-L/14-shaped CLIP, once)" >&2
  rm -rf "$model" "$images"; mkdir -p "$model"
  "$py" scripts/bench/bench_evaluate.py make "$model" "$images"
  touch "$model/.complete"
fi
scripts/cargo.sh build --release --quiet
"$py" scripts/bench/bench_evaluate.py run "$model" "$images" > /tmp/bench-evaluate-torch.json
start=$(date +%s.%N)
/usr/bin/time -f "%M" -o /tmp/bench-evaluate-rss target/release/textual-inversion evaluate --clip_model "$model" \
  --reference_dir "$images/reference" --images "$images/images" --text "a photo of a cat" --json /tmp/bench-evaluate-rust.json
end=$(date +%s.%N)
"$py" - /tmp/bench-evaluate-torch.json /tmp/bench-evaluate-rust.json /tmp/bench-evaluate-rss "$start" "$end" <<'PY'
import json, sys
py, rs = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
rss = int(open(sys.argv[3]).read().split()[-1]) / 1024
total = float(sys.argv[5]) - float(sys.argv[4])
print(f"transformers ({py['threads']} threads): import {py['import_s']:.1f} s, load {py['load_s']:.1f} s, "
      f"score 16 images + 1 text {py['score_s']:.1f} s, peak RSS {py['peak_rss_mb']:.0f} MB")
print(f"textual-inversion evaluate: {total:.1f} s in all (load and score), peak RSS {rss:.0f} MB")
for k in ["image_similarity", "text_similarity"]:
    print(f"{k}: transformers {py[k]:.6f}, textual-inversion {rs[k]:.6f}")
PY
