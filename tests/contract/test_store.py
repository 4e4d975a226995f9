"""The store contract: every backend (SQLite, PostgreSQL) must pass the same suite (Huey's pattern)."""

from __future__ import annotations

import json
import secrets
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from ref2img.protocol import TaskStatus
from ref2img.tasks.store import MAX_ATTEMPTS, QueueFull, Store

@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        instance = Store(f"sqlite:///{tmp_path / 'store.db'}")
        yield instance
        instance.close()
        return
    postgres = request.getfixturevalue("postgres_url")
    schema = f"contract_{secrets.token_hex(4)}"
    admin = create_engine(postgres)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    instance = Store(f"{postgres}?options=-csearch_path%3D{schema}")
    yield instance
    instance.close()
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def new_task(store: Store, app_key: str = "ak_a", **changes):
    fields = dict(app_key=app_key, kind="img2img", request={"prompt": "p"}, params="x", callback=None,
                  idempotency_key=None, timeout_s=600, queue_limit=100)
    fields.update(changes)
    return store.create_task_idempotent(**fields)


def payload(task) -> dict:
    return {"task_id": task.id, "status": task.status}


def test_create_get_and_tenancy(store):
    task, created = new_task(store)
    assert created and task.status == TaskStatus.QUEUED and task.progress == 0
    assert store.get_task(task.id, "ak_a").params == "x"
    assert store.get_task(task.id, "ak_b") is None
    assert store.get_task("t_missing") is None
    assert json.loads(store.get_task(task.id).request) == {"prompt": "p"}


def test_idempotency_key_is_per_app_key(store):
    first, created = new_task(store, idempotency_key="k1")
    again, created_again = new_task(store, idempotency_key="k1")
    other, _ = new_task(store, app_key="ak_b", idempotency_key="k1")
    assert created and not created_again and first.id == again.id != other.id


def test_bounded_queue_drops_nothing(store):
    ids = [new_task(store, queue_limit=3)[0].id for _ in range(3)]
    with pytest.raises(QueueFull) as caught:
        new_task(store, queue_limit=3)
    assert caught.value.retry_after > 0
    assert all(store.get_task(task_id).status == TaskStatus.QUEUED for task_id in ids)


def test_claims_are_fifo_and_positions_count_down(store):
    ids = []
    for _ in range(3):
        ids.append(new_task(store)[0].id)
        time.sleep(0.002)
    assert [store.position(store.get_task(task_id)) for task_id in ids] == [0, 1, 2]
    claimed = store.claim_next("w1", lease_s=30)
    assert claimed.id == ids[0] and claimed.status == TaskStatus.PROCESSING and claimed.attempts == 1
    assert store.position(store.get_task(ids[0])) == -1
    assert store.position(store.get_task(ids[2])) == 1


def test_concurrent_claimers_take_each_task_once(store):
    ids = {new_task(store)[0].id for _ in range(20)}
    taken: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            task = store.claim_next(name, lease_s=30)
            if task is None:
                return
            with lock:
                taken.append(task.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(ids)


def test_finish_lands_once_for_the_lease_owner_with_its_callback(store):
    task, _ = new_task(store, callback="https://hooks.example/cb")
    claimed = store.claim_next("w1", lease_s=30)
    store.set_progress(task.id, "w2", 50)  # not the owner: ignored
    store.set_progress(task.id, "w1", 40)
    assert store.get_task(task.id).progress == 40
    assert not store.finish(task.id, "w2", TaskStatus.SUCCEEDED, result=["a.png"], callback_payload=payload)
    assert store.finish(claimed.id, "w1", TaskStatus.SUCCEEDED, result=["a.png"], callback_payload=payload)
    assert not store.finish(claimed.id, "w1", TaskStatus.FAILED, reason="late", callback_payload=payload)
    done = store.get_task(task.id)
    assert done.status == TaskStatus.SUCCEEDED and done.progress == 100 and json.loads(done.result) == ["a.png"]
    [message] = store.due_callbacks()
    assert message.id == f"msg_{task.id}" and json.loads(message.payload)["status"] == TaskStatus.SUCCEEDED


def test_no_callback_no_outbox(store):
    task, _ = new_task(store)
    store.claim_next("w1", 30)
    store.finish(task.id, "w1", TaskStatus.FAILED, reason="engine", callback_payload=payload)
    assert store.due_callbacks() == [] and store.get_task(task.id).reason == "engine"


def test_cancel_queued_at_once_and_running_by_flag(store):
    running, _ = new_task(store)
    queued, _ = new_task(store, callback="https://hooks.example/cb")
    store.claim_next("w1", 30)
    assert store.request_cancel(queued.id, "ak_a", payload).status == TaskStatus.CANCELLED
    assert store.request_cancel(queued.id, "ak_b", payload) is None
    assert store.should_stop(running.id, "w1") is None
    assert store.request_cancel(running.id, "ak_a", payload).status == TaskStatus.PROCESSING
    assert store.should_stop(running.id, "w1") == TaskStatus.CANCELLED
    assert [m.task_id for m in store.due_callbacks()] == [queued.id]


def test_deadline_is_seen_by_should_stop(store):
    task, _ = new_task(store, timeout_s=0.05)
    store.claim_next("w1", 30)
    time.sleep(0.1)
    assert store.should_stop(task.id, "w1") == TaskStatus.TIMED_OUT


def test_recover_hands_back_orphans_and_ends_the_hopeless(store):
    orphan, _ = new_task(store)
    alive, _ = new_task(store)
    store.claim_next("dead", lease_s=0.01)
    store.claim_next("live", lease_s=60)
    time.sleep(0.05)
    assert store.recover(payload, owner_alive=lambda owner: owner == "live") == 1
    assert store.get_task(orphan.id).status == TaskStatus.QUEUED
    assert store.get_task(alive.id).status == TaskStatus.PROCESSING

    # An orphan that already used its attempts fails; one past its deadline times out.
    for _ in range(MAX_ATTEMPTS - 1):
        store.claim_next("dead", lease_s=0.01)
        time.sleep(0.02)
        store.recover(payload)
    store.claim_next("dead", lease_s=0.01)
    time.sleep(0.02)
    store.recover(payload, owner_alive=lambda owner: owner == "live")
    failed = store.get_task(orphan.id)
    assert failed.status == TaskStatus.FAILED and f"{MAX_ATTEMPTS} times" in failed.reason

    late, _ = new_task(store, timeout_s=0.01)
    time.sleep(0.05)
    store.recover(payload, owner_alive=lambda owner: owner == "live")
    assert store.get_task(late.id).status == TaskStatus.TIMED_OUT


def test_outbox_retry_bookkeeping(store):
    task, _ = new_task(store, callback="https://hooks.example/cb")
    store.claim_next("w1", 30)
    store.finish(task.id, "w1", TaskStatus.SUCCEEDED, result=[], callback_payload=payload)
    message_id = f"msg_{task.id}"
    store.callback_failed(message_id, "HTTP 500", time.time() + 60)
    assert store.due_callbacks() == [] and store.callback(message_id).attempts == 1
    store.callback_failed(message_id, "HTTP 500", time.time() - 1)
    assert [m.id for m in store.due_callbacks()] == [message_id]
    store.callback_delivered(message_id)
    delivered = store.callback(message_id)
    assert delivered.delivered_at is not None and delivered.attempts == 3 and store.due_callbacks() == []


def test_keys_and_files(store):
    from ref2img.tasks.keys import KeyVerifier, create_key

    key = create_key(store, "ci")
    verifier = KeyVerifier(store)
    assert verifier.verify(key.app_key, key.app_secret)
    assert not verifier.verify(key.app_key, "sk_wrong")
    assert store.get_key(key.app_key).secret_hash != key.app_secret.encode()
    assert store.revoke_key(key.app_key) and not store.revoke_key(key.app_key)
    assert not KeyVerifier(store).verify(key.app_key, key.app_secret)
    store.add_file("f1", key.app_key, "uploads/f1.png")
    assert store.get_file("f1").name == "uploads/f1.png"


def test_feeds_wake_waiters(store):
    seen = store.queued.version
    threading.Timer(0.05, lambda: new_task(store)).start()
    assert store.queued.wait(seen, timeout=5) != seen


def test_claim_by_id_drops_duplicates_and_takes_over_dead_leases(store):
    task, _ = new_task(store)
    assert store.claim(task.id, "w1", lease_s=0.05).lease_owner == "w1"
    assert store.claim(task.id, "w2", lease_s=30) is None  # running elsewhere: a duplicate message
    time.sleep(0.1)
    taken = store.claim(task.id, "w2", lease_s=30)  # w1's lease ran out: its worker died
    assert taken.lease_owner == "w2" and taken.attempts == 2
    assert not store.finish(task.id, "w1", TaskStatus.SUCCEEDED, result=[])
    assert store.finish(task.id, "w2", TaskStatus.SUCCEEDED, result=[])
    assert store.claim(task.id, "w3", lease_s=30) is None  # finished


def test_unsent_queued_tasks_are_found_for_resending(store):
    first, _ = new_task(store)
    second, _ = new_task(store)
    store.mark_sent([first.id])
    assert store.unsent_queued(older_than_s=60) == [second.id]
    time.sleep(0.05)
    assert set(store.unsent_queued(older_than_s=0.01)) == {first.id, second.id}


def test_callbacks_are_claimed_by_one_node_at_a_time(store):
    task, _ = new_task(store, callback="https://hooks.example/cb")
    store.claim_next("w1", 30)
    store.finish(task.id, "w1", TaskStatus.SUCCEEDED, result=[], callback_payload=payload)
    assert [m.id for m in store.claim_callbacks(lease_s=60)] == [f"msg_{task.id}"]
    assert store.claim_callbacks(lease_s=60) == []  # reserved by the first node


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_nodes_starting_at_once_migrate_once(backend, tmp_path, request):
    if backend == "sqlite":
        url, cleanup = f"sqlite:///{tmp_path / 'fresh.db'}", None
    else:
        postgres = request.getfixturevalue("postgres_url")
        schema = f"migrate_{secrets.token_hex(4)}"
        admin = create_engine(postgres)
        with admin.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
        url, cleanup = f"{postgres}?options=-csearch_path%3D{schema}", schema
    errors: list[BaseException] = []
    stores: list[Store] = []

    def start() -> None:
        try:
            stores.append(Store(url))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == [] and len(stores) == 4
        with stores[0].engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        new_task(stores[1])
        assert stores[2].count_by_status() == {TaskStatus.QUEUED: 1}
    finally:
        for instance in stores:
            instance.close()
        if cleanup:
            with create_engine(postgres).begin() as connection:
                connection.execute(text(f"DROP SCHEMA {cleanup} CASCADE"))
