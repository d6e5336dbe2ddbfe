#!/usr/bin/env bash
# Creates (once) the pinned Python environment that makes fixtures and runs the PyTorch side of
# the cross-checks and benchmarks, and prints its python path. About 3 GB download (torch's
# CUDA wheels come with it: PyPI has no CPU-only torch for Linux x86_64).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}
venv="$cache/pyenv-fixtures"
req="$here/../fixtures/requirements-fixtures.txt"
# The stamp hashes the requirement lines only: editing a comment does not reinstall.
stamp="$venv/.complete-$(grep -v '^[[:space:]]*#' "$req" | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  echo "[python-env] installing $req into $venv (about 3 GB download, once)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$req" >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
