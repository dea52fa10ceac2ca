"""Key affinity's owner choice: warm keys win, else rendezvous hashing over live workers, so a
worker leaving moves only its own keys."""

from __future__ import annotations

from tideflow_server.matching.affinity import QueueWorkers, Worker, owner

KEYS = [f"model-{i}" for i in range(64)]


def _workers(*names: str) -> list[Worker]:
    return [Worker(n, f"{n}-sticky") for n in names]


def test_every_key_has_one_owner_and_the_keys_spread() -> None:
    workers = _workers("w1", "w2", "w3", "w4")
    owners = {k: owner(k, workers) for k in KEYS}
    assert all(o is not None for o in owners.values())
    assert {o.identity for o in owners.values() if o is not None} == {"w1", "w2", "w3", "w4"}
    # The same answer whatever the order the workers come in.
    assert owners == {k: owner(k, list(reversed(workers))) for k in KEYS}


def test_a_worker_leaving_moves_only_its_keys() -> None:
    before = {k: owner(k, _workers("w1", "w2", "w3", "w4")) for k in KEYS}
    after = {k: owner(k, _workers("w1", "w2", "w4")) for k in KEYS}
    for key in KEYS:
        b, a = before[key], after[key]
        assert b is not None and a is not None
        if b.identity != "w3":
            assert a.identity == b.identity
        else:
            assert a.identity != "w3"


def test_a_warm_key_wins_over_hashing() -> None:
    workers = _workers("w1", "w2", "w3")
    hashed = owner("llama", workers)
    assert hashed is not None
    other = next(w for w in workers if w.identity != hashed.identity)
    other.warm_keys = frozenset({"llama"})
    chosen = owner("llama", workers)
    assert chosen is not None and chosen.identity == other.identity


def test_workers_without_a_sticky_queue_own_nothing() -> None:
    assert owner("k", [Worker("w1", "")]) is None
    assert owner("k", []) is None


def test_liveness_follows_polls() -> None:
    registry = QueueWorkers(live_for=5.0)
    registry.poll_started("w1", sticky_task_queue="s1", warm_keys=(), now=100.0)
    registry.poll_started("w2", sticky_task_queue="s2", warm_keys=["k"], now=100.0)
    registry.poll_ended("w2", now=101.0)
    assert {w.identity for w in registry.live(105.0)} == {"w1", "w2"}
    # w1 still waits on a poll; w2 last polled over 5 s ago.
    assert {w.identity for w in registry.live(106.5)} == {"w1"}
    chosen = registry.owner("k", 106.5)
    assert chosen is not None and chosen.identity == "w1"
    registry.forget_gone(200.0, after=60.0)
    assert {w.identity for w in registry.live(200.0)} == {"w1"}
