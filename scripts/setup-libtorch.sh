#!/usr/bin/env bash
# Installs the libtorch that tch 0.24 expects (2.11.0) into a cache outside the checkout, once,
# and prints `export LIBTORCH=...` for the caller to eval.
#
# Order of preference (first that applies wins):
#   1. $LIBTORCH already set and holding lib/libtorch_cpu.so: used as is.
#   2. LIBTORCH_USE_PYTORCH=1: tch asks the active python3 for its torch (must be 2.11.0).
#   3. The cache ($TI_LIBTORCH_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/textual-inversion):
#      the CPU part of the PyPI torch==2.11.0 wheel plus the two CUDA runtime libraries that
#      libtorch_cpu.so links (cudart, cupti). About 540 MB download, 490 MB on disk.
#   TI_LIBTORCH_FLAVOR=full instead installs the whole wheel with its CUDA dependencies
#   in a venv (about 2.8 GB download, 5 GB on disk) and uses it through LIBTORCH.
#
# Idempotent: a finished install leaves a `.complete` stamp and is reused. Safe to interrupt:
# work happens in a temporary folder that is renamed into place at the end.
set -euo pipefail

TORCH_VERSION=2.11.0
log() { printf '[setup-libtorch] %s\n' "$*" >&2; }

if [[ -n "${LIBTORCH:-}" ]]; then
  if [[ -f "$LIBTORCH/lib/libtorch_cpu.so" ]]; then
    log "using LIBTORCH=$LIBTORCH"
    echo "export LIBTORCH='$LIBTORCH'"
    exit 0
  fi
  log "LIBTORCH=$LIBTORCH has no lib/libtorch_cpu.so; ignoring it"
fi
if [[ -n "${LIBTORCH_USE_PYTORCH:-}" ]]; then
  v=$(python3 -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
  if [[ "$v" == "$TORCH_VERSION" ]]; then
    log "using the torch $v of $(command -v python3) (LIBTORCH_USE_PYTORCH=1)"
    echo "export LIBTORCH_USE_PYTORCH=1"
    exit 0
  fi
  log "LIBTORCH_USE_PYTORCH is set but python3 has torch '${v:-none}', not $TORCH_VERSION; falling back to the cache"
fi

flavor=${TI_LIBTORCH_FLAVOR:-cpu}
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
dest="$cache/libtorch-$TORCH_VERSION-$flavor"
if [[ -f "$dest/.complete" ]]; then
  log "reusing $dest"
  echo "export LIBTORCH='$dest'"
  exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.tmp-libtorch-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)

if [[ "$flavor" == full ]]; then
  log "installing torch==$TORCH_VERSION with its CUDA wheels into a venv (about 2.8 GB download; a few minutes)"
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" install -q "torch==$TORCH_VERSION"
  site=$("$tmp/venv/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
  mkdir -p "$tmp/out"
  ln -s "${site/#$tmp/$dest}/include" "$tmp/out/include"
  ln -s "${site/#$tmp/$dest}/lib" "$tmp/out/lib"
  ln -s "${site/#$tmp/$dest}/share" "$tmp/out/share"
  mv "$tmp/venv" "$tmp/out/venv"
else
  log "downloading the PyPI torch==$TORCH_VERSION wheel (about 530 MB) and two CUDA runtime wheels (once)"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp/wheels" "torch==$TORCH_VERSION"
  whl=$(ls "$tmp"/wheels/torch-*.whl)
  # libtorch_cpu.so links libcudart/libcupti. torch pins them through the `cuda-toolkit` meta
  # package (extras cudart, cupti): let pip resolve exactly those two from the wheel's own pin.
  toolkit=$(python3 - "$whl" <<'PY'
import sys, zipfile, re
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
for line in z.read(meta).decode().splitlines():
    m = re.match(r"Requires-Dist: cuda-toolkit\[[^\]]*\]\s*==\s*([^;\s]+)", line)
    if m:
        print(m.group(1))
PY
)
  [[ -n "$toolkit" ]] || { log "could not find the cuda-toolkit pin in $whl"; exit 1; }
  log "CUDA runtime: cudart and cupti of cuda-toolkit==$toolkit"
  # These wheels carry manylinux2014/2_25 tags: download with the host's own tags.
  python3 -m pip download -q --only-binary=:all: -d "$tmp/wheels" "cuda-toolkit[cudart,cupti]==$toolkit"
  python3 - "$tmp/wheels" "$tmp/out" "$TORCH_VERSION" <<'PY'
import sys, zipfile, glob, os, shutil
wheels, out, version = sys.argv[1:]
libs = {"libtorch_cpu.so", "libc10.so", "libtorch.so", "libtorch_global_deps.so", "libshm.so"}
os.makedirs(os.path.join(out, "lib"), exist_ok=True)
def extract(z, name, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with z.open(name) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
for whl in glob.glob(os.path.join(wheels, "*.whl")):
    z = zipfile.ZipFile(whl)
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("torch/include/") or name.startswith("torch/share/cmake/"):
            if not name.endswith("/"):
                extract(z, name, os.path.join(out, name[len("torch/"):]))
        elif name.startswith("torch/lib/") and (base in libs or base.startswith("libgomp")):
            extract(z, name, os.path.join(out, "lib", base))
        elif "/lib/" in name and name.startswith("nvidia/") and (
            base.startswith("libcudart.so") or base.startswith("libcupti.so")):
            extract(z, name, os.path.join(out, "lib", base))
with open(os.path.join(out, "build-version"), "w") as f:
    f.write(version + "\n")
PY
fi

touch "$tmp/out/.complete"
rm -rf "$dest"
mv "$tmp/out" "$dest"
log "installed in $dest ($(du -sh "$dest" | cut -f1)) in $(( $(date +%s) - start )) s"
echo "export LIBTORCH='$dest'"
