"""Test-suite wiring: where each marker runs.

``vm``/``interop`` tests need the real kernel inside the test VM (``make test-vm`` boots it and
sets KUBE_IPSEC_VM=1); on the host they are deselected, and inside the VM everything else is.
``apiserver`` tests need the real kube-apiserver built by ``make k8s``; their fixture fails
(never skips) when it is missing. A run that selects nothing exits 5, which fails ``make``.
"""

import os

import pytest

pytest_plugins = ["tests.fixtures.apiserver"]

IN_VM = os.environ.get("KUBE_IPSEC_VM") == "1"
VM_MARKERS = ("vm", "interop")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        needs_vm = any(item.get_closest_marker(m) for m in VM_MARKERS)
        (keep if needs_vm == IN_VM else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
