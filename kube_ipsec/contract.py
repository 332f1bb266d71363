"""The operator <-> agent contract, defined once.

Everything both sides must agree on lives here and nowhere else: the API group and resource
names, the ``IPsecTunnel`` spec model with its defaults and the semantic checks the CRD schema
cannot express, the key Secret layout, labels, annotations, condition types, and the per-pair
PSK derivation. The operator writes what the agent reads, so a change here is a wire change:
``tests/contract/`` pins the formats with fixtures.

This module imports nothing else from kube_ipsec (it is the bottom layer).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# --- API identity -------------------------------------------------------------------------------

GROUP = "kube-ipsec.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
TUNNEL_KIND, TUNNEL_PLURAL = "IPsecTunnel", "ipsectunnels"
NODE_KIND, NODE_PLURAL = "IPsecNode", "ipsecnodes"

# --- labels, annotations, finalizer -------------------------------------------------------------

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kube-ipsec"
LABEL_TUNNEL = f"{GROUP}/tunnel"
LABEL_COMPONENT = f"{GROUP}/component"
COMPONENT_KEYS = "keys"
ANNOTATION_ROTATE_NOW = f"{GROUP}/rotate-now"
FINALIZER = f"{GROUP}/cleanup"

# The namespace holding key Secrets (the operator's own); both components read it from here.
NAMESPACE_ENV = "KUBE_IPSEC_NAMESPACE"
DEFAULT_NAMESPACE = "kube-ipsec"


class Condition(enum.StrEnum):
    """Condition types on ``IPsecTunnel.status.conditions``."""

    READY = "Ready"
    KEYS_DISTRIBUTED = "KeysDistributed"
    ROTATING = "Rotating"
    DEGRADED = "Degraded"


# --- spec model ---------------------------------------------------------------------------------


class SpecError(ValueError):
    """An ``IPsecTunnel`` spec that cannot be used; ``problems`` name the fields."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Mode(enum.StrEnum):
    TRANSPORT = "transport"
    TUNNEL = "tunnel"


class Protocol(enum.StrEnum):
    ESP = "esp"
    AH = "ah"


class Enforcement(enum.StrEnum):
    REQUIRE = "require"
    ALLOW_PLAINTEXT = "allow-plaintext"


CIPHERS = ("aes-gcm-128", "aes-gcm-256", "chacha20-poly1305")
INTEGRITY = ("hmac-sha256-128",)
DH_GROUPS = ("x25519", "ecp256", "ecp384", "modp2048")
PRFS = ("sha256", "sha384", "sha512")

_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> datetime.timedelta:
    """Parse the CRD's duration strings (``1h30m``, ``45s``), a subset of Go's syntax."""
    match = _DURATION_RE.match(text or "")
    if not text or match is None:
        raise ValueError(f"invalid duration {text!r}: expected e.g. '24h', '1h30m', '90s'")
    h, m, s = (int(g) if g else 0 for g in match.groups())
    return datetime.timedelta(hours=h, minutes=m, seconds=s)


@dataclasses.dataclass(frozen=True)
class IkeSpec:
    dh_group: str = "x25519"
    prf: str = "sha256"
    lifetime: datetime.timedelta = datetime.timedelta(hours=4)
    child_lifetime: datetime.timedelta = datetime.timedelta(hours=1)
    dpd_interval: datetime.timedelta = datetime.timedelta(seconds=30)


@dataclasses.dataclass(frozen=True)
class RotationSpec:
    interval: datetime.timedelta = datetime.timedelta(hours=24)
    overlap: datetime.timedelta = datetime.timedelta(minutes=10)


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """An IKE peer outside the cluster (e.g. a strongSwan gateway)."""

    name: str
    address: str
    psk_secret_name: str
    psk_secret_key: str = "psk"
    remote_subnets: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TunnelSpec:
    node_selector: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mode: Mode = Mode.TRANSPORT
    protocol: Protocol = Protocol.ESP
    cipher: str | None = "aes-gcm-256"
    integrity: str | None = None
    replay_window: int = 1024
    esn: bool = True
    pfs: bool = True
    enforcement: Enforcement = Enforcement.REQUIRE
    ike: IkeSpec = IkeSpec()
    rotation: RotationSpec = RotationSpec()
    peers: tuple[PeerSpec, ...] = ()

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> TunnelSpec:
        """Build a spec from the object's ``spec``, applying defaults; raise SpecError."""
        return _parse_spec(spec or {})


def _parse_spec(raw: Mapping[str, Any]) -> TunnelSpec:
    problems: list[str] = []

    def choice(path: str, value: Any, allowed: Iterable[str], default: Any) -> Any:
        if value is None:
            return default
        if value not in allowed:
            problems.append(f"spec.{path}: {value!r} is not one of {sorted(allowed)}")
            return default
        return value

    def duration(path: str, value: Any, default: datetime.timedelta) -> datetime.timedelta:
        if value is None:
            return default
        try:
            parsed = parse_duration(str(value))
        except ValueError as exc:
            problems.append(f"spec.{path}: {exc}")
            return default
        if parsed <= datetime.timedelta(0):
            problems.append(f"spec.{path}: must be positive")
            return default
        return parsed

    protocol = Protocol(choice("protocol", raw.get("protocol"), [p.value for p in Protocol], "esp"))
    if protocol is Protocol.AH:
        if raw.get("cipher") is not None:
            problems.append("spec.cipher: AH does not encrypt; remove cipher or use protocol esp")
        cipher = None
        integrity = choice("integrity", raw.get("integrity"), INTEGRITY, INTEGRITY[0])
    else:
        cipher = choice("cipher", raw.get("cipher"), CIPHERS, "aes-gcm-256")
        if raw.get("integrity") is not None:
            problems.append("spec.integrity: only for protocol ah (ESP ciphers are AEAD)")
        integrity = None

    replay_window = raw.get("replayWindow", 1024)
    if not isinstance(replay_window, int) or not 0 <= replay_window <= 4096:
        problems.append(f"spec.replayWindow: {replay_window!r} must be an integer in 0..4096")
        replay_window = 1024
    esn = bool(raw.get("esn", True))
    if esn and replay_window == 0:
        problems.append("spec.replayWindow: must be > 0 when esn is true")

    ike_raw = raw.get("ike") or {}
    ike = IkeSpec(
        dh_group=choice("ike.dhGroup", ike_raw.get("dhGroup"), DH_GROUPS, "x25519"),
        prf=choice("ike.prf", ike_raw.get("prf"), PRFS, "sha256"),
        lifetime=duration("ike.lifetime", ike_raw.get("lifetime"), IkeSpec.lifetime),
        child_lifetime=duration(
            "ike.childLifetime", ike_raw.get("childLifetime"), IkeSpec.child_lifetime
        ),
        dpd_interval=duration("ike.dpdInterval", ike_raw.get("dpdInterval"), IkeSpec.dpd_interval),
    )
    if ike.child_lifetime > ike.lifetime:
        problems.append("spec.ike.childLifetime: must not exceed spec.ike.lifetime")

    rot_raw = raw.get("rotation") or {}
    rotation = RotationSpec(
        interval=duration("rotation.interval", rot_raw.get("interval"), RotationSpec.interval),
        overlap=duration("rotation.overlap", rot_raw.get("overlap"), RotationSpec.overlap),
    )
    if rotation.interval < datetime.timedelta(minutes=1):
        problems.append("spec.rotation.interval: must be at least 1m")
    if rotation.overlap >= rotation.interval:
        problems.append("spec.rotation.overlap: must be shorter than spec.rotation.interval")

    mode = Mode(choice("mode", raw.get("mode"), [m.value for m in Mode], "transport"))
    peers = tuple(_parse_peers(raw.get("peers") or [], mode, problems))
    enforcement = Enforcement(
        choice(
            "enforcement", raw.get("enforcement"), [e.value for e in Enforcement], "require"
        )
    )
    selector = raw.get("nodeSelector") or {}
    _check_selector(selector, problems)

    if problems:
        raise SpecError(problems)
    return TunnelSpec(
        node_selector=selector, mode=mode, protocol=protocol, cipher=cipher, integrity=integrity,
        replay_window=replay_window, esn=esn, pfs=bool(raw.get("pfs", True)),
        enforcement=enforcement, ike=ike, rotation=rotation, peers=peers,
    )


def _parse_peers(raw: list[Any], mode: Mode, problems: list[str]) -> Iterable[PeerSpec]:
    seen_addresses: set[str] = set()
    for i, peer in enumerate(raw):
        path = f"spec.peers[{i}]"
        try:
            address = ipaddress.ip_address(peer.get("address", ""))
        except ValueError:
            problems.append(f"{path}.address: {peer.get('address')!r} is not an IP address")
            continue
        if address.is_loopback or address.is_multicast or address.is_unspecified:
            problems.append(f"{path}.address: {address} cannot be an IPsec peer")
        if str(address) in seen_addresses:
            problems.append(f"{path}.address: {address} is listed twice")
        seen_addresses.add(str(address))
        subnets = []
        for j, cidr in enumerate(peer.get("remoteSubnets") or []):
            try:
                subnets.append(str(ipaddress.ip_network(cidr, strict=True)))
            except ValueError as exc:
                problems.append(f"{path}.remoteSubnets[{j}]: {exc}")
        if subnets and mode is not Mode.TUNNEL:
            problems.append(f"{path}.remoteSubnets: needs spec.mode tunnel")
        ref = peer.get("pskSecretRef") or {}
        yield PeerSpec(
            name=peer.get("name", ""), address=str(address),
            psk_secret_name=ref.get("name", ""), psk_secret_key=ref.get("key", "psk"),
            remote_subnets=tuple(subnets),
        )


_SELECTOR_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}


def _check_selector(selector: Mapping[str, Any], problems: list[str]) -> None:
    for i, expr in enumerate(selector.get("matchExpressions") or []):
        op, values = expr.get("operator"), expr.get("values") or []
        if op not in _SELECTOR_OPERATORS:
            problems.append(f"spec.nodeSelector.matchExpressions[{i}].operator: {op!r} unknown")
        elif op in ("In", "NotIn") and not values:
            problems.append(f"spec.nodeSelector.matchExpressions[{i}].values: {op} needs values")
        elif op in ("Exists", "DoesNotExist") and values:
            problems.append(f"spec.nodeSelector.matchExpressions[{i}].values: {op} takes none")


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` is selected (Kubernetes LabelSelector semantics)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# --- key Secret ---------------------------------------------------------------------------------

KEY_BYTES = 32
MAX_GENERATIONS = 3
SECRET_MANIFEST = "manifest.json"


def secret_name(tunnel: str) -> str:
    return f"ipsec-keys-{tunnel}"


def generation_data_key(generation: int) -> str:
    return f"gen-{generation}.key"


def peer_psk_data_key(peer: str) -> str:
    return f"peer-{peer}.psk"


class KeyFormatError(ValueError):
    """A key Secret that does not follow the contract (never includes key bytes)."""


@dataclasses.dataclass(frozen=True)
class KeyGeneration:
    number: int
    created: str  # RFC 3339, UTC
    key: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class KeySet:
    """The keys of one tunnel, as stored in its Secret.

    ``current`` is the generation initiators authenticate with. Generations above it are
    *staged*: every node accepts them but nobody uses them yet, so a key reaches all nodes
    before any node depends on it. Generations below it are *previous*: still accepted until
    the operator retires them, which it does only after every node reports the current one
    in use (acknowledged rotation).
    """

    current: int
    generations: tuple[KeyGeneration, ...]
    peer_psks: Mapping[str, bytes] = dataclasses.field(default_factory=dict, repr=False)

    def get(self, number: int) -> KeyGeneration:
        for gen in self.generations:
            if gen.number == number:
                return gen
        raise KeyError(number)

    @property
    def numbers(self) -> list[int]:
        return sorted(g.number for g in self.generations)

    @property
    def newest(self) -> int:
        return max(self.numbers)

    def to_secret_data(self) -> dict[str, str]:
        """The Secret's ``data`` (base64 values), in the contract's layout."""
        manifest = {
            "current": self.current,
            "generations": [
                {"generation": g.number, "createdAt": g.created}
                for g in sorted(self.generations, key=lambda g: g.number)
            ],
        }
        data = {SECRET_MANIFEST: json.dumps(manifest, sort_keys=True).encode()}
        data.update({generation_data_key(g.number): g.key for g in self.generations})
        data.update({peer_psk_data_key(p): psk for p, psk in self.peer_psks.items()})
        return {k: base64.b64encode(v).decode() for k, v in data.items()}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> KeySet:
        """Parse a Secret's ``data``; raise KeyFormatError naming what is wrong."""
        data = data or {}
        try:
            manifest = json.loads(base64.b64decode(data[SECRET_MANIFEST], validate=True))
            current = int(manifest["current"])
            entries = [(int(e["generation"]), str(e["createdAt"])) for e in manifest["generations"]]
        except KeyError as exc:
            raise KeyFormatError(f"missing {exc.args[0]!r}") from None
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"unreadable {SECRET_MANIFEST}: {type(exc).__name__}") from None
        generations = []
        for number, created in entries:
            name = generation_data_key(number)
            try:
                key = base64.b64decode(data[name], validate=True)
            except KeyError:
                raise KeyFormatError(f"generation {number} listed but {name} missing") from None
            except ValueError:
                raise KeyFormatError(f"{name} is not base64") from None
            if len(key) != KEY_BYTES:
                raise KeyFormatError(f"{name} has {len(key)} bytes, expected {KEY_BYTES}")
            generations.append(KeyGeneration(number, created, key))
        if not generations or current not in {g.number for g in generations}:
            raise KeyFormatError(f"current generation {current} is not among the generations")
        peer_psks = {}
        for name, value in data.items():
            if name.startswith("peer-") and name.endswith(".psk"):
                try:
                    peer_psks[name[5:-4]] = base64.b64decode(value, validate=True)
                except ValueError:
                    raise KeyFormatError(f"{name} is not base64") from None
        return cls(current, tuple(sorted(generations, key=lambda g: g.number)), peer_psks)


def utcnow_rfc3339(now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now(datetime.UTC)
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- PSK derivation -----------------------------------------------------------------------------

PSK_BYTES = 32
_PSK_SALT = b"kube-ipsec.dev psk v1"


def derive_pair_psk(generation_key: bytes, tunnel: str, node_a: str, node_b: str,
                    generation: int) -> bytes:
    """The IKE pre-shared key of one node pair under one key generation.

    HKDF-SHA256 over the generation key, bound to the tunnel, the generation and both node
    identities in sorted order, so the two nodes derive the same key whoever initiates, and a
    node that learns its own pair keys learns nothing about other pairs'.
    """
    if node_a == node_b:
        raise ValueError("a node does not pair with itself")
    first, second = sorted((node_a, node_b))
    info = b"\x00".join(
        [tunnel.encode(), str(generation).encode(), first.encode(), second.encode()]
    )
    return HKDF(algorithm=hashes.SHA256(), length=PSK_BYTES, salt=_PSK_SALT, info=info).derive(
        generation_key
    )


# --- IPsecNode status (written by the agent, read by the operator) ------------------------------

IKE_ESTABLISHED = "ESTABLISHED"  # peers[].ikeState once the IKE SA is up
CHILD_INSTALLED = "INSTALLED"  # peers[].childState once SAs and policies are in the kernel


def node_object_name(node: str) -> str:
    return node


def node_generation_in_use(ipsec_node: Mapping[str, Any], tunnel: str) -> int | None:
    """The key generation a node reports in use for ``tunnel`` (None if it reports none)."""
    for entry in (ipsec_node.get("status") or {}).get("tunnels") or []:
        if entry.get("name") == tunnel:
            value = entry.get("keyGenerationInUse")
            return int(value) if value is not None else None
    return None


def node_generations_loaded(ipsec_node: Mapping[str, Any], tunnel: str) -> list[int]:
    """The key generations a node has loaded (accepts) for ``tunnel``."""
    for entry in (ipsec_node.get("status") or {}).get("tunnels") or []:
        if entry.get("name") == tunnel:
            return [int(g) for g in entry.get("keyGenerationsLoaded") or []]
    return []
