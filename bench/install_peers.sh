#!/usr/bin/env bash
# The benchmark's peers, into the tools cache outside the repo (a second run returns at once):
# KServe's router built from the Go module proxy, Ray Serve in its own virtual environment, and
# vegeta (a constant-rate load generator, for CPU per request at fixed offered rates).
set -euo pipefail
# A second argument "no-ray" leaves Ray Serve out (make bench-resilience needs only the others).
CACHE=${1:-$HOME/.cache/infergraph}
WHAT=${2:-all}
HERE=$(cd "$(dirname "$0")" && pwd)
RAY_VERSION=2.60.0
VEGETA_VERSION=v12.13.0
bash "$HERE/build_kserve_router.sh" "$CACHE"
vegeta="$CACHE/bin/vegeta-$VEGETA_VERSION"
if [ ! -x "$vegeta" ]; then
  work=$(mktemp -d)
  GOBIN="$work" CGO_ENABLED=0 go install "github.com/tsenart/vegeta/v12@$VEGETA_VERSION"
  mv "$work/vegeta" "$vegeta"
  rm -rf "$work"
fi
[ "$WHAT" = no-ray ] && exit 0
venv="$CACHE/venvs/ray-$RAY_VERSION"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "ray[serve]==$RAY_VERSION" aiohttp orjson
  touch "$venv/.complete"
fi
