#!/usr/bin/env bash
# Regenerates the committed fixtures with the pinned PyTorch/diffusers/transformers, by section.
# usage: scripts/make-fixtures.sh [--check] [SECTION... | all]   (--help lists the sections;
# --check regenerates into a scratch copy and compares with the checkout by value)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=$("$here/dev/python-env.sh")
exec "$py" "$here/fixtures/regenerate.py" "$@"
