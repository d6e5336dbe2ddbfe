#!/usr/bin/env bash
# Fuzzes the file readers (formats/, no libtorch) with cargo-fuzz (libFuzzer + ASan).
# usage: scripts/dev/fuzz.sh [SECONDS per target, default 600] [TARGET...]
# Needs a nightly toolchain (`rustup toolchain install nightly`) and `cargo install cargo-fuzz`.
# Corpora are seeded from fixtures/ and kept in fuzz/corpus/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-600}; shift || true
targets=("$@"); [[ ${#targets[@]} -gt 0 ]] || targets=(pickle torch_zip safetensors_header png_chunk)
copy() {  # seeds named after their folder too, so equal file names do not collide
  local d=$1; shift
  for f in "$@"; do cp "$f" "$d/$(basename "$(dirname "$f")")-$(basename "$f")"; done
}
seed() {
  local t=$1 d=fuzz/corpus/$1; mkdir -p "$d"
  case $t in
    pickle) python3 - "$d" <<'PY'
import sys, zipfile, glob, os
for f in glob.glob("fixtures/*/*.pt") + glob.glob("fixtures/*/*.bin"):
    try:
        z = zipfile.ZipFile(f)
    except zipfile.BadZipFile:
        continue
    for n in z.namelist():
        if n.endswith("data.pkl"):
            open(os.path.join(sys.argv[1], os.path.basename(f) + ".pkl"), "wb").write(z.read(n))
PY
    ;;
    torch_zip) copy "$d" fixtures/torch/*.pt fixtures/embeddings/*.pt fixtures/embeddings/*.bin ;;
    safetensors_header) copy "$d" fixtures/embeddings/*.safetensors ;;
    png_chunk) copy "$d" fixtures/embeddings/*.png ;;
  esac
}
for t in "${targets[@]}"; do
  seed "$t"
  echo "== $t: ${secs}s"
  cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -max_len=16384 -rss_limit_mb=2048 -malloc_limit_mb=128 -timeout=10 -print_final_stats=1 2>&1 \
    | grep -E "^(stat::|==|#[0-9]+ *DONE|INFO: -max_total_time|SUMMARY|ERROR|.*deadly signal)" || true
done
