#!/usr/bin/env bash
# Regenerates the committed fixtures with the pinned PyTorch/diffusers/transformers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=$("$here/dev/python-env.sh")
exec "$py" "$here/fixtures/make_fixtures_formats.py" "$@"
