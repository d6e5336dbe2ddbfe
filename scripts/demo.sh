#!/usr/bin/env bash
# The demo: builds the tool and runs it on the bundled embedding files (fixtures/embeddings,
# written by real PyTorch/safetensors/PIL): what each file holds, then a round of conversions
# between the diffusers, A1111 and SDXL formats. Output files go to ./demo-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-libtorch.sh)"
cargo build --release --quiet
ti=target/release/textual-inversion
out=demo-output
mkdir -p "$out"
run() { echo; echo "\$ textual-inversion $*"; "$ti" "$@"; }
run info
run inspect fixtures/embeddings/{diffusers.safetensors,diffusers_multi.bin,a1111.pt,kohya.safetensors,sdxl.safetensors,fp16.safetensors,legacy_format.bin,a1111_text.png,a1111_pixels.png}
run convert fixtures/embeddings/a1111.pt "$out/my-style.safetensors"
run convert fixtures/embeddings/a1111_pixels.png "$out/png-style.bin"
run convert --token '<renamed>' --dtype fp16 "$out/my-style.safetensors" "$out/renamed.pt"
run convert fixtures/embeddings/sdxl.safetensors "$out/sdxl.safetensors"
run inspect "$out"/*
echo
echo "A file that would run code is refused, and nothing runs:"
run inspect fixtures/embeddings/evil.pt || true
