#!/usr/bin/env bash
# Builds the real Kubernetes API server and etcd from the Go module proxy into a cache outside
# the repository, keyed by version, and fetches the Knative Service CRD from the knative.dev/serving
# module. Nothing built or fetched here is committed. A second run finds the binaries and returns.
# Usage: build.sh [CACHE_DIR [KUBERNETES_COMMAND...]]   (default ~/.cache/infergraph; the API
# server always, and the other commands named: kubelet, kube-scheduler, ..., or agnhost)
set -euo pipefail
CACHE=${1:-$HOME/.cache/infergraph}
shift || true
KUBE_VERSION=${KUBE_VERSION:-v1.36.3}
STAGING_VERSION=v0.${KUBE_VERSION#v1.}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KNATIVE_VERSION=${KNATIVE_VERSION:-v0.50.0}
BIN=$CACHE/bin
mkdir -p "$BIN"
export GOFLAGS=-mod=mod

# Each Kubernetes command is built with the release's version (Knative, and some clients, refuse
# the v0.0.0-master a plain build reports): a binary that says otherwise is rebuilt. One Go module
# serves every command asked for.
build_kube() {
  local missing=() cmd
  for cmd in "$@"; do
    local out=$BIN/$cmd-$KUBE_VERSION
    [ -x "$out" ] && { [ "$cmd" = agnhost ] || "$out" --version 2>/dev/null | grep -qx "Kubernetes $KUBE_VERSION"; } && continue
    missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local work; work=$(mktemp -d)
  cd "$work"
  go mod init infergraph.test/kube >/dev/null 2>&1
  # k8s.io/kubernetes requires its staging modules at v0.0.0 with local replaces: point each at
  # the published module of the same release.
  local gomod; gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging' "$gomod" | awk '{print $1}' | while read -r module; do
    go mod edit -replace="$module=$module@$STAGING_VERSION"
  done
  go mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"
  local v=k8s.io/component-base/version minor=${KUBE_VERSION#v1.}
  for cmd in "${missing[@]}"; do
    local pkg=k8s.io/kubernetes/cmd/$cmd
    # agnhost (Kubernetes' own test image binary) serves as the cluster tier's pause image.
    [ "$cmd" = agnhost ] && pkg=k8s.io/kubernetes/test/images/agnhost
    go get "$pkg@$KUBE_VERSION"
    CGO_ENABLED=0 go build -trimpath -o "$BIN/$cmd-$KUBE_VERSION.tmp" -ldflags "-X $v.gitVersion=$KUBE_VERSION \
      -X $v.gitMajor=1 -X $v.gitMinor=${minor%%.*} -X $v.gitTreeState=clean" "$pkg"
    mv "$BIN/$cmd-$KUBE_VERSION.tmp" "$BIN/$cmd-$KUBE_VERSION"
  done
  cd / && rm -rf "$work"
}

build_etcd() {
  local out=$BIN/etcd-$ETCD_VERSION
  [ -x "$out" ] && return 0
  local work; work=$(mktemp -d)
  cd "$work"
  go mod init infergraph.test/etcd >/dev/null 2>&1
  local gomod; gomod=$(go mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  # etcd's server module replaces its sibling modules with relative paths: use the released ones.
  grep -E '^\s*go.etcd.io/etcd/[a-z0-9/]+ => \.\./' "$gomod" | awk '{print $1}' | while read -r module; do
    go mod edit -replace="$module=$module@$ETCD_VERSION"
  done
  go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  CGO_ENABLED=0 go build -trimpath -o "$out.tmp" go.etcd.io/etcd/server/v3
  mv "$out.tmp" "$out"
  cd / && rm -rf "$work"
}

fetch_knative_crd() {
  local out=$CACHE/crds/knative-serving-$KNATIVE_VERSION-service.yaml
  [ -f "$out" ] && return 0
  mkdir -p "$(dirname "$out")"
  local dir; dir=$(cd "$(mktemp -d)" && go mod download -json "knative.dev/serving@$KNATIVE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  cp "$dir/config/core/300-resources/service.yaml" "$out.tmp"
  mv "$out.tmp" "$out"
}

fetch_knative_crd
build_etcd
build_kube kube-apiserver "$@"
echo "kube-apiserver $KUBE_VERSION${*:+ and $*}, etcd $ETCD_VERSION and the Knative Service CRD are in $CACHE"
