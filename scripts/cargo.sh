#!/usr/bin/env bash
# cargo with libtorch set up: `scripts/cargo.sh build --release`, `scripts/cargo.sh test`.
# (torch-sys rebuilds — minutes — whenever LIBTORCH changes, so always build through this.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
eval "$("$here/setup-libtorch.sh")"
exec cargo "$@"
