"""We test these aspects of the watchers (agent/watchers.py) against a scripted fake API:

- list, then watch from the list's resourceVersion; ADDED/MODIFIED/DELETED/BOOKMARK applied;
- a failing watch keeps the objects, reports the error, and the relist replaces the cache
  (objects deleted meanwhile disappear); a 410 Gone relists without reporting an error;
- key Secrets: a broken one keeps the last good KeySet and counts an error; a deleted one
  drops the tunnel's keys.
"""

import asyncio
import contextlib

from kube_ipsec import contract
from kube_ipsec.agent import kube, watchers
from tests.agent import helpers
from tests.agent.pair import eventually


def obj(name, version, **extra):
    return {"metadata": {"name": name, "resourceVersion": str(version)}, **extra}


class FakeApi:
    """Each ``get`` pops the next listing; each ``watch`` plays the next script of events."""

    def __init__(self, listings, watches):
        self.listings, self.watches = list(listings), list(watches)
        self.watched_from: list[str] = []

    async def get(self, path, **params):
        if not self.listings:
            raise kube.ApiError(503, "gone for good")
        items, version = self.listings.pop(0)
        return {"metadata": {"resourceVersion": str(version)}, "items": items}

    async def watch(self, path, version, *, label_selector=None, timeout_seconds=300):
        self.watched_from.append(version)
        script = self.watches.pop(0) if self.watches else None
        if script is None:
            await asyncio.Event().wait()  # hang like a quiet watch
        for event in script:
            if isinstance(event, Exception):
                raise event
            yield event


async def run_reflector(api):
    changes = []
    r = watchers.Reflector(api, "/x", lambda: changes.append(dict(r.objects)))
    task = asyncio.create_task(r.run())
    return r, task, changes


async def stop(task):
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_list_then_watch_applies_events_in_order(monkeypatch):
    monkeypatch.setattr(watchers, "BACKOFF_MIN", 0.01)
    api = FakeApi([([obj("a", 1)], 10)], [[
        {"type": "ADDED", "object": obj("b", 11)},
        {"type": "MODIFIED", "object": obj("a", 12, spec={"x": 1})},
        {"type": "BOOKMARK", "object": obj("", 13)},
        {"type": "DELETED", "object": obj("b", 14)},
    ]])
    r, task, _ = await run_reflector(api)
    await eventually(lambda: len(api.watched_from) == 2)
    assert api.watched_from == ["10", "14"]
    assert set(r.objects) == {"a"} and r.objects["a"]["spec"] == {"x": 1}
    await stop(task)


async def test_outage_keeps_objects_then_relist_replaces_them(monkeypatch):
    monkeypatch.setattr(watchers, "BACKOFF_MIN", 0.01)
    api = FakeApi([([obj("a", 1), obj("b", 1)], 10), ([obj("a", 2)], 20)],
                  [[ConnectionResetError("apiserver stopped")]])
    r, task, _ = await run_reflector(api)
    await eventually(lambda: api.watched_from == ["10", "20"])
    assert set(r.objects) == {"a"} and r.error is None
    await stop(task)
    api = FakeApi([([obj("a", 1)], 10)], [[ConnectionResetError("down")]])
    r, task, _ = await run_reflector(api)
    await eventually(lambda: r.error is not None)
    assert set(r.objects) == {"a"} and "down" in r.error
    await stop(task)


async def test_gone_relists_quietly(monkeypatch):
    monkeypatch.setattr(watchers, "BACKOFF_MIN", 0.01)
    gone = {"type": "ERROR", "object": {"code": 410, "message": "too old"}}
    api = FakeApi([([], 10), ([obj("c", 30)], 30)], [[gone]])
    r, task, _ = await run_reflector(api)
    await eventually(lambda: api.watched_from == ["10", "30"])
    assert set(r.objects) == {"c"} and r.error is None
    await stop(task)


def test_broken_secret_keeps_last_good_keys_and_deleted_secret_drops_them():
    w = watchers.Watchers(FakeApi([], []), "ns", lambda: None)
    good = helpers.key_secret("mesh", helpers.keyset(1, (1,)))
    good["metadata"]["resourceVersion"] = "1"
    w.secrets.objects = {"ipsec-keys-mesh": good}
    w._changed()
    assert w.snapshot().keys["mesh"].numbers == [1]
    broken = helpers.key_secret("mesh", helpers.keyset(2, (1, 2)))
    broken["metadata"]["resourceVersion"] = "2"
    del broken["data"][contract.generation_data_key(2)]
    before = watchers.KEY_SECRET_ERRORS.labels("mesh")._value.get()
    w.secrets.objects = {"ipsec-keys-mesh": broken}
    w._changed()
    snap = w.snapshot()
    assert snap.keys["mesh"].numbers == [1] and "generation 2 listed" in snap.errors["mesh"]
    assert watchers.KEY_SECRET_ERRORS.labels("mesh")._value.get() == before + 1
    w.secrets.objects = {}
    w._changed()
    assert w.snapshot().keys == {} and w.snapshot().errors == {}
