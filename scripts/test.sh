#!/usr/bin/env bash
# The project's test command (CI runs exactly this through .ci/run).
# Sets up libtorch if needed (scripts/setup-libtorch.sh), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-libtorch.sh)"
exec cargo test --workspace --release "$@"
