#!/usr/bin/env bash
# Makes sure gloo's C++ headers exist for csrc/c10d.cpp (distributed training). The libtorch
# wheels carry the compiled gloo but not its headers; Debian's libgloo-dev has them (a 2022
# snapshot whose headers agree with what libtorch 2.11 compiled in for the classes we use:
# tests/distributed.rs proves it on every build).
#
# Looks in $TI_GLOO_INCLUDE (default /usr/include). When they are missing and this is root on a
# system with apt-get, installs libgloo-dev; otherwise says how, and the build goes on without
# c10d (one process only). Prints `export TI_REQUIRE_C10D=1` when the headers are there, so
# that the tests fail rather than skip if the build somehow lacks c10d.
set -euo pipefail

log() { printf '[setup-gloo] %s\n' "$*" >&2; }
inc=${TI_GLOO_INCLUDE:-/usr/include}
have() { [[ -f "$inc/gloo/algorithm.h" && -f "$inc/gloo/rendezvous/store.h" ]]; }

if have; then
  log "gloo headers found in $inc"
  echo "export TI_REQUIRE_C10D=1"
  exit 0
fi
if [[ -n "${TI_GLOO_INCLUDE:-}" ]]; then
  log "TI_GLOO_INCLUDE=$inc has no gloo/algorithm.h: building without c10d (one process only)"
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  log "installing libgloo-dev (gloo's headers, about 270 KB) with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q libgloo-dev >&2; then
    log "apt-get install failed; updating the package lists and trying again"
    apt-get update -q >&2 || true
    apt-get install -y -q libgloo-dev >&2 || true
  fi
  if have; then
    log "gloo headers installed in $inc"
    echo "export TI_REQUIRE_C10D=1"
    exit 0
  fi
  log "could not install libgloo-dev: building without c10d (one process only)"
  exit 0
fi
log "gloo headers not found in $inc: building without c10d (one process only). For distributed"
log "training install them (Debian/Ubuntu: sudo apt-get install libgloo-dev) or point"
log "TI_GLOO_INCLUDE at a folder holding gloo/, then rebuild."
