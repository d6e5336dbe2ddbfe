#!/usr/bin/env bash
# Fuzzes the file readers (formats/, no libtorch) with cargo-fuzz (libFuzzer + ASan).
# usage: scripts/dev/fuzz.sh [SECONDS per target, default 600] [TARGET...]
# Targets: pickle, checkpoint (training checkpoints: inert classes, state dicts), torch_zip,
# safetensors_header, png_chunk (all of them by default).
# Needs a nightly toolchain (`rustup toolchain install nightly`) and `cargo install cargo-fuzz`.
# Corpora are seeded from fixtures/ and kept in fuzz/corpus/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-600}; shift || true
targets=("$@"); [[ ${#targets[@]} -gt 0 ]] || targets=(pickle checkpoint torch_zip safetensors_header png_chunk)
copy() {  # seeds named after their folder too, so equal file names do not collide
  local d=$1; shift
  for f in "$@"; do cp "$f" "$d/$(basename "$(dirname "$f")")-$(basename "$f")"; done
}
data_pkls() {  # DIR GLOB...: the data.pkl of every torch.save zip the globs match
  python3 - "$@" <<'PY'
import sys, zipfile, glob, os
for f in [f for g in sys.argv[2:] for f in glob.glob(g)]:
    try:
        z = zipfile.ZipFile(f)
    except zipfile.BadZipFile:
        continue
    for n in z.namelist():
        if n.endswith("data.pkl"):
            open(os.path.join(sys.argv[1], os.path.basename(f) + ".pkl"), "wb").write(z.read(n))
PY
}
seed() {
  local t=$1 d=fuzz/corpus/$1; mkdir -p "$d"
  case $t in
    pickle) data_pkls "$d" 'fixtures/*/*.pt' 'fixtures/*/*.bin' ;;
    checkpoint)
      # Every pickle of the fixtures (the SD 1.x training checkpoint's included), and
      # checkpoint-style pickles naming Lightning, OmegaConf and numpy classes (stand-ins:
      # nothing is imported).
      data_pkls "$d" 'fixtures/*/*.pt' 'fixtures/*/*.bin' 'fixtures/*/*.ckpt'
      python3 - "$d" <<'PY'
import sys, os, pickle, types, collections
out = sys.argv[1]
def stub(module, name):
    parts = module.split(".")
    for i in range(1, len(parts) + 1):  # pickle imports the module, so its parents too
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    m = sys.modules[module]
    cls = type(name, (), {"__module__": module})
    setattr(m, name, cls)
    return cls
Callback = stub("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
Config = stub("omegaconf.dictconfig", "DictConfig")
Scalar = stub("numpy.core.multiarray", "scalar")
cb, cfg = Callback(), Config()
cb.__dict__.update(dirpath="logs", monitor=None, best_k_models={"a.ckpt": 0.5})
cfg.__dict__.update(_content={"lr": 1e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion"})
dd = collections.defaultdict(list, {"a": [1, 2]})
ckpt = {"epoch": 3, "global_step": 875000, "pytorch-lightning_version": "1.9.0",
        "callbacks": {Callback: {"best": None}}, "loops": {"fit_loop": cb}, "hyper_parameters": cfg,
        "optimizer_states": [{"state": {0: {"step": 10}}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}],
        "lr_schedulers": [dd], "state_dict": collections.OrderedDict(w=1.5, b=[True, None])}
for proto in (2, 4):
    open(os.path.join(out, f"lightning-p{proto}.pkl"), "wb").write(pickle.dumps(ckpt, protocol=proto))
PY
    copy "$d" fixtures/torch/*.pt ;;
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
