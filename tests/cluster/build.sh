#!/usr/bin/env bash
# Everything the cluster tier (tests/cluster) runs, built or fetched into a cache outside the
# repository, keyed by version; nothing here is committed. A warm run only checks and returns.
#
# - Debian packages: containerd, runc, the CNI plugins, iptables (kube-proxy's mode).
# - From the Go module proxy: kubelet, kube-controller-manager, kube-scheduler, kube-proxy and
#   agnhost (Kubernetes' test binary; its `pause` is the sandbox image) with the API server and
#   etcd (tests/kube/build.sh), CoreDNS, and Knative Serving's webhook, controller, autoscaler,
#   activator and queue-proxy with their configuration (config/ of the serving, networking and
#   caching modules, which the module zips of serving lack as git symlinks).
# - Images, as OCI archives containerd imports: the router and operator (tests/images/build.sh),
#   the local predictor, the pause image and one image per Knative binary (FROM scratch).
# Usage: build.sh [CACHE_DIR]   (default ~/.cache/infergraph)
set -euo pipefail
CACHE=${1:-$HOME/.cache/infergraph}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
KUBE_VERSION=${KUBE_VERSION:-v1.36.3}
KNATIVE_VERSION=${KNATIVE_VERSION:-v0.50.0}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
BIN=$CACHE/bin
KN=$CACHE/knative-$KNATIVE_VERSION
ARCHIVES=$CACHE/cluster/images
mkdir -p "$BIN" "$ARCHIVES"
export GOFLAGS=-mod=mod CGO_ENABLED=0

packages() {
  local missing=() tool
  for tool in containerd runc iptables /usr/lib/cni/bridge; do
    command -v "$tool" >/dev/null || [ -x "$tool" ] || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      containerd runc containernetworking-plugins iptables >/dev/null
  fi
}

knative() {
  local cmds=(webhook controller autoscaler activator queue) missing=() cmd
  for cmd in "${cmds[@]}"; do [ -x "$KN/bin/$cmd" ] || missing+=("$cmd"); done
  if [ ${#missing[@]} -gt 0 ]; then
    local work; work=$(mktemp -d)
    (
      cd "$work"
      go mod init infergraph.test/knative >/dev/null 2>&1
      go mod edit -require="knative.dev/serving@$KNATIVE_VERSION"
      for cmd in "${missing[@]}"; do go get "knative.dev/serving/cmd/$cmd@$KNATIVE_VERSION"; done
      mkdir -p "$KN/bin"
      for cmd in "${missing[@]}"; do
        go build -trimpath -o "$KN/bin/$cmd.tmp" "knative.dev/serving/cmd/$cmd"
        mv "$KN/bin/$cmd.tmp" "$KN/bin/$cmd"
      done
    )
    rm -rf "$work"
  fi
  [ -d "$KN/config/core" ] && return 0
  local work; work=$(mktemp -d)
  (
    cd "$work"
    go mod init infergraph.test/knative-config >/dev/null 2>&1
    go mod edit -require="knative.dev/serving@$KNATIVE_VERSION"
    go mod download knative.dev/serving
    local serving networking caching
    serving=$(go list -m -f '{{.Dir}}' knative.dev/serving)
    # The networking and caching versions serving requires.
    go mod download knative.dev/networking knative.dev/caching
    networking=$(go list -m -f '{{.Dir}}' knative.dev/networking)
    caching=$(go list -m -f '{{.Dir}}' knative.dev/caching)
    mkdir -p "$KN/config.tmp"
    cp -r "$serving/config/core" "$KN/config.tmp/core"
    cp -r "$networking/config" "$KN/config.tmp/networking"
    cp -r "$caching/config" "$KN/config.tmp/caching"
    chmod -R u+w "$KN/config.tmp"
    rm -rf "$KN/config" && mv "$KN/config.tmp" "$KN/config"
  )
  rm -rf "$work"
}

coredns() {
  local out=$BIN/coredns-$COREDNS_VERSION
  [ -x "$out" ] && return 0
  local work; work=$(mktemp -d)
  (
    cd "$work"
    go mod init infergraph.test/coredns >/dev/null 2>&1
    go mod edit -require="github.com/coredns/coredns@$COREDNS_VERSION"
    go get "github.com/coredns/coredns@$COREDNS_VERSION"
    go build -trimpath -o "$out.tmp" github.com/coredns/coredns
    mv "$out.tmp" "$out"
  )
  rm -rf "$work"
}

# A FROM-scratch image of one static binary, saved as an OCI archive for containerd.
scratch_image() {
  local name=$1 binary=$2 tag=$3
  shift 3
  local archive=$ARCHIVES/${name//\//-}-$tag.tar
  [ -f "$archive" ] && return 0
  local context; context=$(mktemp -d)
  cp "$binary" "$context/app"
  local entrypoint; entrypoint=$(python3 -c 'import json,sys; print(json.dumps(["/ko-app/app", *sys.argv[1:]]))' "$@")
  # Knative's manifests run as non-root without naming a user: the image says which (65532, as
  # its distroless images do). KO_DATA_PATH as ko sets it.
  printf 'FROM scratch\nCOPY app /ko-app/app\nENV KO_DATA_PATH=/var/run/ko\nUSER 65532:65532\nENTRYPOINT %s\n' \
    "$entrypoint" > "$context/Dockerfile"
  podman build --quiet --layers=false -t "localhost/$name:$tag" "$context" >/dev/null
  podman save --quiet --format oci-archive -o "$archive.tmp" "localhost/$name:$tag"
  mv "$archive.tmp" "$archive"
  rm -rf "$context"
}

# The router, operator and predictor images of this tree, saved under the tree's hash.
project_images() {
  local tag; tag=$(cat "$CACHE/images/tag")
  local part
  for part in router operator predictor; do
    local archive=$ARCHIVES/infergraph-$part-$tag.tar
    [ -f "$archive" ] && continue
    podman save --quiet --format oci-archive -o "$archive.tmp" "localhost/infergraph/$part:$tag"
    mv "$archive.tmp" "$archive"
  done
  # Archives of older trees are not needed again.
  for part in router operator predictor; do
    find "$ARCHIVES" -name "infergraph-$part-*.tar" ! -name "*-$tag.tar" -delete
  done
}

packages
"$REPO/tests/kube/build.sh" "$CACHE" kubelet kube-controller-manager kube-scheduler kube-proxy agnhost >/dev/null
coredns
knative
"$REPO/tests/images/build.sh" "$CACHE"
export CONTAINERS_CONF=$CACHE/images/containers.conf
scratch_image infergraph/pause "$BIN/agnhost-$KUBE_VERSION" "$KUBE_VERSION" pause
for cmd in webhook controller autoscaler activator queue; do
  scratch_image "knative/$cmd" "$KN/bin/$cmd" "$KNATIVE_VERSION"
done
project_images
