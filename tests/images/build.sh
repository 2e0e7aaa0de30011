#!/usr/bin/env bash
# Builds the router, operator and local predictor images with podman, as the tests run them.
#
# - Installs podman, buildah, mmdebstrap and runc from Debian when missing.
# - A base image (Debian bookworm with Python 3.11, made with mmdebstrap from the configured
#   mirror: no registry is used) is cached in CACHE/images, keyed by its release and packages.
# - The images are built from deploy/Dockerfile.* with BASE_IMAGE set to that base, from the
#   files git tracks (the build context the .dockerignore leaves), and tagged with the hash of
#   that context: an unchanged tree is not rebuilt.
# Usage: build.sh [CACHE_DIR]   (default ~/.cache/infergraph). Prints nothing on a warm run.
set -euo pipefail
CACHE=${1:-$HOME/.cache/infergraph}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
BASE_TAG=localhost/infergraph-base:$SUITE-py3.11-2
IMAGES=$CACHE/images
mkdir -p "$IMAGES"

need() {
  local missing=()
  for tool in podman buildah mmdebstrap runc; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      podman buildah mmdebstrap runc uidmap containernetworking-plugins >/dev/null
  fi
}

# runc, not crun (crun refuses this machine's hybrid cgroups); rlimits podman can set here.
containers_conf() {
  cat > "$IMAGES/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
}

base_image() {
  podman image exists "$BASE_TAG" && return 0
  local tar=$IMAGES/$SUITE-python3.11-2.tar
  if [ ! -f "$tar" ]; then
    local mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    # mmdebstrap picks its output format from the name: keep the .tar ending.
    # No recommended packages (perl came with them), and no documentation, manual pages or
    # translations (copyright files stay).
    mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
      --aptopt='APT::Install-Recommends "false"' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' \
      "$SUITE" "$tar.part.tar" "${mirror:-http://deb.debian.org/debian}"
    mv "$tar.part.tar" "$tar"
  fi
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tar" "$BASE_TAG" >/dev/null
}

build() {
  local part=$1 context=$2 tag=$3
  podman image exists "$tag" && return 0
  # The host's CA bundle is mounted for pip's downloads (this machine's egress re-signs TLS);
  # a mount, so it is in no layer of the image.
  podman build --quiet --network host --layers=false \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --build-arg BASE_IMAGE="$BASE_TAG" \
    -f "$context/deploy/Dockerfile.$part" -t "$tag" "$context" >/dev/null
}

need
containers_conf
export CONTAINERS_CONF=$IMAGES/containers.conf
base_image
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
git -C "$REPO" ls-files -co --exclude-standard | (cd "$REPO" && tar -cf - -T -) | tar -C "$context" -xf -
# The tag is the hash of what the Dockerfiles copy (and of the Dockerfiles and this script).
hash=$( (cd "$context" && find pyproject.toml README.md src router predictors operator \
    deploy/Dockerfile.router deploy/Dockerfile.operator deploy/Dockerfile.predictor \
    tests/images/build.sh \
    \( -type f -o -type l \) -print0 | LC_ALL=C sort -z \
    | xargs -0 -I{} sh -c 'printf "%s\n" "{}"; if [ -L "{}" ]; then readlink "{}"; else cat "{}"; fi') \
  | sha256sum | cut -c1-16)
for part in router operator predictor; do
  build "$part" "$context" "localhost/infergraph/$part:$hash"
  podman tag "localhost/infergraph/$part:$hash" "localhost/infergraph/$part:test"
done
echo "$hash" > "$IMAGES/tag"
