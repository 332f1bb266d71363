"""Make the kernel's owned SAs and policies equal a desired set, with the fewest changes.

Used by the agent on start (adopt what survived a restart, remove the rest) and by
``flush_owned``. Only objects that ``model.owned_sa``/``owned_policy`` recognise are read as
"current"; anything else in the SAD/SPD (strongSwan, Cilium, an admin) is invisible here, and a
desired object that is not owned is refused, so reconcile can never touch a foreign object.

Order, chosen so a reconcile never drops or leaks traffic that was flowing:
1. add missing SAs (an SA alone changes nothing for outbound traffic);
2. add or UPDPOLICY policies (UPDPOLICY swaps templates atomically);
3. delete stale policies, then 4. stale SAs (nothing refers to them any more).
Larval SAs (ALLOCSPI reservations, no keys) are left alone: they belong to negotiations in
flight and the kernel expires them after ``xfrm_acq_expires``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from kube_ipsec.xfrm import errors
from kube_ipsec.xfrm.kernel import Kernel
from kube_ipsec.xfrm.model import SA, Policy, PolicyId, SaId, owned_policy, owned_sa


@dataclass
class Changes:
    """What a reconcile did (objects, so the caller can log or count them)."""

    added_sas: list[SA] = field(default_factory=list)
    updated_sas: list[SA] = field(default_factory=list)
    replaced_sas: list[SA] = field(default_factory=list)
    deleted_sas: list[SA] = field(default_factory=list)
    added_policies: list[Policy] = field(default_factory=list)
    updated_policies: list[Policy] = field(default_factory=list)
    deleted_policies: list[Policy] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))


def is_larval(sa: SA) -> bool:
    return sa.aead is None and sa.auth is None


async def reconcile(
    kernel: Kernel, sas: Iterable[SA] = (), policies: Iterable[Policy] = ()
) -> Changes:
    want_sas: dict[SaId, SA] = {sa.id: sa for sa in sas}
    want_pols: dict[PolicyId, Policy] = {p.id: p for p in policies}
    foreign: list[object] = [o for o in want_sas.values() if not owned_sa(o)]
    foreign += [p for p in want_pols.values() if not owned_policy(p)]
    if foreign:
        raise ValueError(f'not owned by kube-ipsec (reqid/priority range): {foreign[0]}')
    have_sas = {s.id: s for s in await kernel.dump_sas() if owned_sa(s) and not is_larval(s)}
    have_pols = {p.id: p for p in await kernel.dump_policies() if owned_policy(p)}
    done = Changes()

    for key, sa in want_sas.items():
        old = have_sas.get(key)
        if old is None:
            await kernel.add_sa(sa)
            done.added_sas.append(sa)
        elif old != sa and _same_keys(old, sa):
            await kernel.update_sa(sa)  # lifetimes/encap only: UPDSA keeps counters and keys
            done.updated_sas.append(sa)
        elif old != sa:
            await kernel.delete_sa(old)  # XFRM has no atomic replace of an SA's keys
            await kernel.add_sa(sa)
            done.replaced_sas.append(sa)
    for pkey, p in want_pols.items():
        old_p = have_pols.get(pkey)
        if old_p is None:
            await kernel.add_policy(p)
            done.added_policies.append(p)
        elif old_p != p:
            await kernel.update_policy(p)
            done.updated_policies.append(p)
    for pkey, p in have_pols.items():
        if pkey not in want_pols:
            await _ignore_missing(kernel.delete_policy(p))
            done.deleted_policies.append(p)
    for key, sa in have_sas.items():
        if key not in want_sas:
            await _ignore_missing(kernel.delete_sa(sa))
            done.deleted_sas.append(sa)
    return done


async def flush_owned(kernel: Kernel) -> tuple[int, int]:
    """Delete every owned policy, then every owned SA (larval ones too); never FLUSHSA.

    Larval SAs without an SPI (made by an ACQUIRE, or by an ALLOCSPI that found no free SPI)
    cannot be addressed by DELSA, which looks SAs up by SPI; the kernel drops them after
    ``xfrm_acq_expires`` (30 s), so they are left to that and not counted.
    """
    policies = [p for p in await kernel.dump_policies() if owned_policy(p)]
    for p in policies:
        await _ignore_missing(kernel.delete_policy(p))
    sas = [s for s in await kernel.dump_sas() if owned_sa(s) and s.spi]
    for s in sas:
        await _ignore_missing(kernel.delete_sa(s))
    return len(policies), len(sas)


def _same_keys(a: SA, b: SA) -> bool:
    """Equal but for what UPDSA may change on a valid SA (lifetimes, encap ports)."""
    return dataclasses.replace(a, lifetime=b.lifetime, encap=b.encap) == b


async def _ignore_missing(op: object) -> None:
    """Deleting something that vanished meanwhile (expired, deleted by a peer) is fine."""
    try:
        await op  # type: ignore[misc]
    except (errors.NoSuchSa, errors.NoSuchPolicy):
        pass
