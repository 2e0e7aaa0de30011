#!/usr/bin/env bash
# Builds KServe's own InferenceGraph router (the benchmark peer) from the Go module proxy into a
# cache outside the repo: a wrapper module that copies kserve's replace and exclude directives
# (`go install` refuses a module that has them). Nothing built or fetched here is committed. A
# second run finds the binary and returns.
set -euo pipefail
CACHE=${1:-$HOME/.cache/infergraph}
KSERVE_VERSION=v0.20.0
out="$CACHE/bin/kserve-router-$KSERVE_VERSION"
[ -x "$out" ] && exit 0
mkdir -p "$CACHE/bin"
export GOFLAGS=-mod=mod
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init infergraph.bench/kserve-router >/dev/null 2>&1
gomod=$(go mod download -json "github.com/kserve/kserve@$KSERVE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
python3 - "$gomod" <<'PY'
import re, subprocess, sys
text = open(sys.argv[1]).read()
def directives(word):
    block = re.search(rf"^{word} \((.*?)^\)", text, re.M | re.S)
    lines = block.group(1).splitlines() if block else []
    lines += [m.group(1) for m in re.finditer(rf"^{word} ([^(].*)$", text, re.M)]
    return [l.split("//")[0].strip() for l in lines if l.split("//")[0].strip()]
for line in directives("replace"):
    old, new = (part.strip() for part in line.split("=>"))
    if new.startswith("."):
        continue  # a path inside kserve's own tree
    subprocess.run(["go", "mod", "edit", f"-replace={old.replace(' ', '@')}={new.replace(' ', '@')}"], check=True)
for line in directives("exclude"):
    subprocess.run(["go", "mod", "edit", f"-exclude={line.replace(' ', '@')}"], check=True)
PY
go mod edit -require="github.com/kserve/kserve@$KSERVE_VERSION"
go get "github.com/kserve/kserve/cmd/router@$KSERVE_VERSION"
CGO_ENABLED=0 go build -trimpath -o "$out.tmp" github.com/kserve/kserve/cmd/router
mv "$out.tmp" "$out"
