#!/usr/bin/env bash
# The project's test command (CI runs exactly this through .ci/run).
# Sets up libtorch if needed (scripts/setup-libtorch.sh), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-libtorch.sh)"
realworld=${TI_REALWORLD_DIR:-../shared/realworld}
if [[ ! -f "$realworld/bad-artist.pt" ]]; then
  echo "[test] $realworld has no published embedding files: the tests that read them skip (set TI_REALWORLD_DIR to run them)" >&2
fi
exec cargo test --workspace --release "$@"
