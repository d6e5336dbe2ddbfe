#!/usr/bin/env bash
# The project's test command (CI runs exactly this through .ci/run).
# Sets up libtorch if needed (scripts/setup-libtorch.sh) and gloo's headers for the distributed
# engine (scripts/setup-gloo.sh), checks formatting and lints, then runs every test of the
# workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-libtorch.sh)"
eval "$(scripts/setup-gloo.sh)"
realworld=${TI_REALWORLD_DIR:-../shared/realworld}
if [[ ! -f "$realworld/bad-artist.pt" ]]; then
  echo "[test] $realworld has no published embedding files: the tests that read them skip (set TI_REALWORLD_DIR to run them)" >&2
fi
# Style and lints gate the tests (rustfmt.toml holds the style).
cargo fmt --all --check
cargo clippy --workspace --release --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --release --no-deps --quiet
# One libtorch thread per process: the test harness already runs tests in parallel, and each
# test runs the binary; libtorch's default of a thread per core oversubscribes a small machine
# (a tiny generate took 15x longer under load). Results do not depend on it.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Tests that cannot run here (no published files, no reference Python, no CUDA libtorch) append
# a line to this file; they are listed after the run. TI_NO_SKIP=1 makes them fail instead.
TI_SKIP_LOG=$(mktemp)
export TI_SKIP_LOG
trap 'rm -f "$TI_SKIP_LOG"' EXIT
rc=0
cargo test --workspace --release "$@" || rc=$?
if [[ -s "$TI_SKIP_LOG" ]]; then
  echo "[test] $(wc -l < "$TI_SKIP_LOG") tests skipped (TI_NO_SKIP=1 makes a skip a failure):" >&2
  sort "$TI_SKIP_LOG" | sed 's/^/[test]   /' >&2
fi
exit "$rc"
