#!/usr/bin/env bash
# The cost of a training update's reduce on c10d/Gloo, this tool's and PyTorch's, in one run:
# the placeholder rows this tool reduces against the whole embedding-matrix gradient DDP reduces
# for the Python script. usage: scripts/bench/bench-distributed.sh [RANKS] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ranks=${1:-2}
repeats=${2:-20}
eval "$(scripts/setup-libtorch.sh)"
cargo build --release --example bench_allreduce >&2
export OMP_NUM_THREADS=1
target/release/examples/bench_allreduce "$ranks" "$repeats"
py=$(scripts/dev/python-env.sh)
"$py" -m torch.distributed.run --standalone --nproc_per_node "$ranks" scripts/bench/allreduce_torch.py "$repeats" 2>/dev/null
