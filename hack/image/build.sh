#!/usr/bin/env bash
# Build the kube-ipsec image with podman (no Docker engine, no registry needed) and smoke-test
# every entrypoint in it. Not part of `make test`; `make image` runs it. Needs root.
#
# 1. apt-get installs podman, buildah, debootstrap and runc (crun refuses this host's hybrid
#    cgroups; runc works).
# 2. The base image is made locally: debootstrap a minimal Debian with python3 + venv, then
#    `podman import` (no registry can be pulled from here). Reused when present.
# 3. `podman build` of ./Dockerfile with the host's CA bundle mounted for pip (not committed).
# 4. Runs `<entrypoint> --help` for each console script, checks the default user is not root
#    and that the image carries neither iproute2 nor a compiler.
# Env: IMAGE (default localhost/kube-ipsec:<version>), BASE_IMAGE, SUITE (default bookworm).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1)"
IMAGE="${IMAGE:-localhost/kube-ipsec:$VERSION}"
SUITE="${SUITE:-bookworm}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian-python:$SUITE}"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
WORK="${KUBE_IPSEC_CACHE:-$HOME/.cache/kube-ipsec}/image"

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

install_tools() {
    local missing=()
    for p in podman buildah debootstrap runc; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# runc instead of crun; nofile/nproc within the host's hard limits (podman's defaults exceed them).
write_containers_conf() {
    mkdir -p "$WORK"
    cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF="$WORK/containers.conf"
}

debian_mirror() {
    local uri
    uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    [[ -n "$uri" ]] || uri="$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
    [[ -n "$uri" ]] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
    echo "$uri"
}

make_base() {
    if podman image exists "$BASE_IMAGE"; then
        log "base image $BASE_IMAGE present"
        return
    fi
    local root="$WORK/rootfs-$SUITE"
    rm -rf "$root" && mkdir -p "$root"
    log "debootstrap $SUITE (minbase)"
    debootstrap --variant=minbase "$SUITE" "$root" "$(debian_mirror)" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; exit 1; }
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
    trap 'umount "$root/dev/pts" "$root/proc" "$root/dev" 2>/dev/null || true' EXIT
    log "python3 + venv into the base"
    chroot "$root" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive;
        apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv \
        && apt-get clean && rm -rf /var/lib/apt/lists/*' >/dev/null
    umount "$root/dev/pts" "$root/proc" "$root/dev"
    trap - EXIT
    : > "$root/etc/resolv.conf"
    log "podman import -> $BASE_IMAGE"
    tar -C "$root" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null 2>&1
    rm -rf "$root"
}

run() { podman run --rm "$@"; }

smoke_test() {
    local failed=0 ep
    for ep in kube-ipsec-operator kube-ipsec-agent kube-ipsec; do
        if out="$(run "$IMAGE" "$ep" --help 2>&1)"; then
            log "ok: $ep --help ($(wc -l <<<"$out") lines)"
        else
            log "FAILED: $ep --help"; printf '%s\n' "$out" | tail -5; failed=1
        fi
    done
    # Every module imports: catches a runtime dependency that --help does not reach.
    if out="$(run "$IMAGE" python -c 'import importlib, pkgutil, kube_ipsec
mods = [m.name for m in pkgutil.walk_packages(kube_ipsec.__path__, "kube_ipsec.")
        if not m.name.endswith("__main__")]
for m in mods: importlib.import_module(m)
print(len(mods))' 2>&1)"; then
        log "ok: all $out modules import"
    else
        log "FAILED: importing the package"; printf '%s\n' "$out" | tail -5; failed=1
    fi
    uid="$(run "$IMAGE" id -u)"
    [[ "$uid" != 0 ]] && log "ok: default user uid $uid" || { log "FAILED: runs as root"; failed=1; }
    local found
    found="$(run "$IMAGE" sh -c 'for t in ip gcc cc make; do command -v $t; done' || true)"
    if [[ -n "$found" ]]; then
        log "FAILED: build or network tools in the image: $found"; failed=1
    else
        log "ok: no iproute2, no compiler"
    fi
    return "$failed"
}

main() {
    [[ $EUID -eq 0 ]] || { echo "run as root (apt-get, debootstrap, podman import)" >&2; exit 1; }
    local start=$SECONDS
    install_tools
    write_containers_conf
    make_base
    log "podman build -> $IMAGE"
    podman build -q -v "$CA_BUNDLE:$CA_BUNDLE:ro" --build-arg "BASE=$BASE_IMAGE" \
        -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO"
    log "size: $(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec)"
    smoke_test
    log "done in $((SECONDS - start)) s: $IMAGE"
}

main "$@"
