# One image for the operator, the agent and the CLI:
#   kube-ipsec-operator, kube-ipsec-agent, kube-ipsec   (console scripts on PATH)
# Runs as an unprivileged user by default; the agent's DaemonSet sets runAsUser 0 and adds
# NET_ADMIN. No iproute2 or compilers: the agent talks netlink itself (pyroute2).
#
# Without a registry, hack/image/build.sh builds BASE locally (debootstrap) and runs this.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
# The dependencies' wheels first, in a layer of their own that only pyproject.toml invalidates
# (an empty package and README stand in for ours), so a code change rebuilds in seconds.
RUN mkdir kube_ipsec && touch kube_ipsec/__init__.py README.md \
 && pip wheel --no-cache-dir --wheel-dir /wheels . \
 && rm -r kube_ipsec README.md /wheels/kube_ipsec-*.whl
COPY README.md ./
COPY kube_ipsec/ kube_ipsec/
# Our wheel, then an offline install of exactly these wheels; pip itself is not shipped.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip install --no-cache-dir --no-index --find-links /wheels kube-ipsec \
 && pip uninstall -y -q pip \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE}
COPY --from=build /opt/venv /opt/venv
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin kube-ipsec
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
CMD ["kube-ipsec", "--help"]
