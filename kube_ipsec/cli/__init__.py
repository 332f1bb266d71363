"""The ``kube-ipsec`` command line (console script ``kube-ipsec = kube_ipsec.cli:main``).

It sits beside the operator and agent, above ``contract``: it reads only what they publish
through the API and never imports their internals.
"""

from kube_ipsec.cli.app import main

__all__ = ["main"]
