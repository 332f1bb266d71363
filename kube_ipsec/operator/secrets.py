"""Key Secret I/O: reading, writing and deleting a tunnel's key Secret, and peer PSKs.

Every write of an existing Secret carries the ``resourceVersion`` it was planned from, so two
operators (a failover overlap) or a stale cache can never both apply a step: the loser gets
:class:`Conflict` and re-plans from a fresh read. Creation is guarded the same way by the
API's AlreadyExists.

Besides the contract's data layout, the Secret carries one annotation of the operator's own:
the rotate-now request value it last acted on, written in the same request that stages the
new generation. An operator killed right after staging thus never rotates twice for one
request (the value is compared, not the annotation's presence).

Key bytes pass through here but never into a log line or an exception message: API errors are
described by status code and reason only (their bodies may echo what was sent).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import secrets
from collections.abc import Mapping
from typing import Any

import kubernetes

from kube_ipsec import contract
from kube_ipsec.operator import rotation

ANNOTATION_ROTATE_HANDLED = f"{contract.GROUP}/rotate-now-handled"
SECRET_TYPE = "Opaque"


class Conflict(Exception):
    """Someone else wrote the Secret since it was read (or created it first)."""


def new_key() -> bytes:
    return secrets.token_bytes(contract.KEY_BYTES)


def describe(exc: BaseException) -> str:
    """A loggable description of an API error, without its (possibly echoing) body."""
    if isinstance(exc, kubernetes.client.ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return type(exc).__name__


@dataclasses.dataclass(frozen=True)
class Stored:
    """What a tunnel's key Secret holds, as far as the operator is concerned."""

    exists: bool
    keys: contract.KeySet | None = None
    problem: str = ""  # why keys is None although the Secret exists (never key bytes)
    resource_version: str | None = None
    handled: str | None = None  # the rotate-now value recorded with the last fresh key


def parse(body: Mapping[str, Any] | None) -> Stored:
    if body is None:
        return Stored(exists=False)
    meta = body.get("metadata") or {}
    rv = meta.get("resourceVersion")
    handled = (meta.get("annotations") or {}).get(ANNOTATION_ROTATE_HANDLED)
    try:
        keys = contract.KeySet.from_secret_data(body.get("data"))
        for generation in keys.generations:
            rotation.parse_time(generation.created)
    except contract.KeyFormatError as exc:
        return Stored(True, None, str(exc), rv, handled)
    except ValueError:
        return Stored(True, None, "unreadable createdAt in the manifest", rv, handled)
    return Stored(True, keys, "", rv, handled)


def manifest(
        tunnel: str,
        namespace: str,
        keys: contract.KeySet,
        *,
        handled: str | None,
        owner_uid: str | None,
        resource_version: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": contract.secret_name(tunnel),
        "namespace": namespace,
        "labels": {
            contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
            contract.LABEL_TUNNEL: tunnel,
            contract.LABEL_COMPONENT: contract.COMPONENT_KEYS,
        },
        "annotations": {ANNOTATION_ROTATE_HANDLED: handled} if handled is not None else {},
    }
    if owner_uid:
        # Cluster-scoped owner: garbage collection backs up the finalizer's own deletion.
        meta["ownerReferences"] = [{
            "apiVersion": contract.API_VERSION, "kind": contract.TUNNEL_KIND, "name": tunnel,
            "uid": owner_uid, "controller": True,
        }]
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": SECRET_TYPE,
            "data": keys.to_secret_data()}


def _typed(body: dict[str, Any]) -> Any:
    secret = kubernetes.client.V1Secret.from_dict(body)
    assert secret is not None
    return secret


class SecretStore:
    """The operator namespace's Secrets, through a blocking Kubernetes client."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.namespace = namespace
        self._serialize = api_client.sanitize_for_serialization

    def get(self, tunnel: str) -> dict[str, Any] | None:
        try:
            obj = self.core.read_namespaced_secret(contract.secret_name(tunnel), self.namespace)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(self._serialize(obj))

    def create(self, tunnel: str, keys: contract.KeySet, *, handled: str | None,
               owner_uid: str | None) -> dict[str, Any]:
        body = manifest(tunnel, self.namespace, keys, handled=handled, owner_uid=owner_uid)
        try:
            obj = self.core.create_namespaced_secret(
                self.namespace, _typed(body))
        except kubernetes.client.ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"Secret {body['metadata']['name']} already exists") from None
            raise
        return dict(self._serialize(obj))

    def replace(self, tunnel: str, keys: contract.KeySet, *, handled: str | None,
                owner_uid: str | None, resource_version: str) -> dict[str, Any]:
        body = manifest(tunnel, self.namespace, keys, handled=handled, owner_uid=owner_uid,
                        resource_version=resource_version)
        name = body["metadata"]["name"]
        try:
            obj = self.core.replace_namespaced_secret(
                name, self.namespace, _typed(body))
        except kubernetes.client.ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict(f"Secret {name} changed since it was read") from None
            raise
        return dict(self._serialize(obj))

    def delete(self, tunnel: str) -> bool:
        try:
            self.core.delete_namespaced_secret(contract.secret_name(tunnel), self.namespace)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def peer_psk(self, peer: contract.PeerSpec) -> bytes | None:
        """The PSK an external peer's Secret holds (None if the Secret or key is missing)."""
        try:
            obj = self.core.read_namespaced_secret(peer.psk_secret_name, self.namespace)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        value = (obj.data or {}).get(peer.psk_secret_key)
        if not value:
            return None
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
