"""The store contract: every backend (SQLite, PostgreSQL) must pass the same suite (Huey's pattern)."""

from __future__ import annotations

import json
import secrets
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from ref2img.protocol import TaskStatus
from ref2img.tasks.store import (
    MAX_ATTEMPTS,
    IdempotencyMismatch,
    QueueFull,
    Quota,
    QuotaExceeded,
    Store,
    StoreBusy,
    StoreConflict,
)


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
    fields = dict(
        app_key=app_key,
        kind="img2img",
        request={"prompt": "p"},
        params="x",
        callback=None,
        idempotency_key=None,
        timeout_s=600,
        queue_limit=100,
    )
    fields.update(changes)
    return store.tasks.create_idempotent(**fields)


def test_create_get_and_tenancy(store):
    task, created = new_task(store)
    assert created and task.status == TaskStatus.QUEUED and task.progress == 0
    assert store.tasks.get(task.id, "ak_a").params == "x"
    assert store.tasks.get(task.id, "ak_b") is None
    assert store.tasks.get("t_missing") is None
    assert json.loads(store.tasks.get(task.id).request) == {"prompt": "p"}


def test_idempotency_key_is_per_app_key(store):
    first, created = new_task(store, idempotency_key="k1")
    again, created_again = new_task(store, idempotency_key="k1")
    other, _ = new_task(store, app_key="ak_b", idempotency_key="k1")
    assert created and not created_again and first.id == again.id != other.id


def test_an_idempotency_key_with_another_body_is_refused(store):
    new_task(store, idempotency_key="k1")
    for changed in (
        {"request": {"prompt": "other"}},
        {"params": "y"},
        {"kind": "img2mask"},
        {"callback": "https://example.com/hook"},
    ):
        with pytest.raises(IdempotencyMismatch):
            new_task(store, idempotency_key="k1", **changed)


def parallel_creates(store: Store, count: int, **fields) -> list[str]:
    """`count` creates released at the same instant, each on its own thread: what got through."""
    barrier, outcomes = threading.Barrier(count), []

    def create() -> None:
        barrier.wait()
        try:
            task, _ = new_task(store, **fields)
            outcomes.append(task.id)
        except (QueueFull, QuotaExceeded):
            outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


@pytest.mark.parametrize(
    ("limit", "quota"),
    [
        ("max_concurrent", Quota(max_concurrent=1)),
        ("per_minute", Quota(per_minute=3)),
        ("queue_limit", None),
    ],
)
def test_twenty_parallel_creates_respect_the_exact_limit(store, limit, quota):
    allowed = {"max_concurrent": 1, "per_minute": 3, "queue_limit": 4}[limit]
    outcomes = parallel_creates(store, 20, quota=quota, queue_limit=4 if limit == "queue_limit" else 100)
    assert len(outcomes) == 20
    assert sum(outcome != "refused" for outcome in outcomes) == allowed, outcomes


def test_bounded_queue_drops_nothing(store):
    ids = [new_task(store, queue_limit=3)[0].id for _ in range(3)]
    with pytest.raises(QueueFull) as caught:
        new_task(store, queue_limit=3)
    assert caught.value.retry_after > 0
    assert all(store.tasks.get(task_id).status == TaskStatus.QUEUED for task_id in ids)


def test_one_key_cannot_fill_the_queue_for_another(store):
    """Each key holds at most its share of the queued tasks: past it, that key alone is refused (naming its
    share), and another key still gets in."""
    for _ in range(3):
        new_task(store, "ak_greedy", queue_limit=12, key_queue_limit=3)
    with pytest.raises(QuotaExceeded, match=r"this key has 3 tasks queued, its share of the queue \(3 of 12\)"):
        new_task(store, "ak_greedy", queue_limit=12, key_queue_limit=3)
    other, created = new_task(store, "ak_other", queue_limit=12, key_queue_limit=3)
    assert created and other.status == TaskStatus.QUEUED


def test_claims_are_fifo_and_positions_count_down(store):
    ids = []
    for _ in range(3):
        ids.append(new_task(store)[0].id)
        time.sleep(0.002)
    assert [store.tasks.position(store.tasks.get(task_id)) for task_id in ids] == [0, 1, 2]
    claimed = store.tasks.claim_next("w1", lease_s=30)
    assert claimed.id == ids[0] and claimed.status == TaskStatus.PROCESSING and claimed.attempts == 1
    assert store.tasks.position(store.tasks.get(ids[0])) == -1
    assert store.tasks.position(store.tasks.get(ids[2])) == 1


def test_concurrent_claimers_take_each_task_once(store):
    ids = {new_task(store)[0].id for _ in range(20)}
    taken: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            task = store.tasks.claim_next(name, lease_s=30)
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
    claimed = store.tasks.claim_next("w1", lease_s=30)
    store.tasks.set_progress(task.id, "w2", 50)  # not the owner: ignored
    store.tasks.set_progress(task.id, "w1", 40)
    assert store.tasks.get(task.id).progress == 40
    assert not store.tasks.finish(task.id, "w2", TaskStatus.SUCCEEDED, result=["a.png"])
    assert store.tasks.finish(claimed.id, "w1", TaskStatus.SUCCEEDED, result=["a.png"])
    assert not store.tasks.finish(claimed.id, "w1", TaskStatus.FAILED, reason="late")
    done = store.tasks.get(task.id)
    assert done.status == TaskStatus.SUCCEEDED and done.progress == 100 and json.loads(done.result) == ["a.png"]
    [message] = store.outbox.due()  # the body is rendered by the sender, from the task as it ended
    assert message.id == f"msg_{task.id}" and message.task_id == task.id and message.payload is None


def test_no_callback_no_outbox(store):
    task, _ = new_task(store)
    store.tasks.claim_next("w1", 30)
    store.tasks.finish(task.id, "w1", TaskStatus.FAILED, reason="engine")
    assert store.outbox.due() == [] and store.tasks.get(task.id).reason == "engine"


def test_cancel_queued_at_once_and_running_by_flag(store):
    running, _ = new_task(store)
    queued, _ = new_task(store, callback="https://hooks.example/cb")
    store.tasks.claim_next("w1", 30)
    assert store.tasks.request_cancel(queued.id, "ak_a").status == TaskStatus.CANCELLED
    assert store.tasks.request_cancel(queued.id, "ak_b") is None
    assert store.tasks.should_stop(running.id, "w1") is None
    assert store.tasks.request_cancel(running.id, "ak_a").status == TaskStatus.PROCESSING
    assert store.tasks.should_stop(running.id, "w1") == TaskStatus.CANCELLED
    assert [m.task_id for m in store.outbox.due()] == [queued.id]


def test_deadline_is_seen_by_should_stop(store):
    task, _ = new_task(store, timeout_s=0.05)
    store.tasks.claim_next("w1", 30)
    time.sleep(0.1)
    assert store.tasks.should_stop(task.id, "w1") == TaskStatus.TIMED_OUT


def test_recover_hands_back_orphans_and_ends_the_hopeless(store):
    orphan, _ = new_task(store)
    alive, _ = new_task(store)
    store.tasks.claim_next("dead", lease_s=0.01)
    store.tasks.claim_next("live", lease_s=60)
    time.sleep(0.05)
    assert store.tasks.recover(owner_alive=lambda owner: owner == "live") == 1
    assert store.tasks.get(orphan.id).status == TaskStatus.QUEUED
    assert store.tasks.get(alive.id).status == TaskStatus.PROCESSING

    # An orphan that already used its attempts fails; one past its deadline times out.
    for _ in range(MAX_ATTEMPTS - 1):
        store.tasks.claim_next("dead", lease_s=0.01)
        time.sleep(0.02)
        store.tasks.recover()
    store.tasks.claim_next("dead", lease_s=0.01)
    time.sleep(0.02)
    store.tasks.recover(owner_alive=lambda owner: owner == "live")
    failed = store.tasks.get(orphan.id)
    assert failed.status == TaskStatus.FAILED and f"{MAX_ATTEMPTS} times" in failed.reason

    late, _ = new_task(store, timeout_s=0.01)
    time.sleep(0.05)
    store.tasks.recover(owner_alive=lambda owner: owner == "live")
    assert store.tasks.get(late.id).status == TaskStatus.TIMED_OUT


def test_outbox_retry_bookkeeping(store):
    task, _ = new_task(store, callback="https://hooks.example/cb")
    store.tasks.claim_next("w1", 30)
    store.tasks.finish(task.id, "w1", TaskStatus.SUCCEEDED, result=[])
    message_id = f"msg_{task.id}"
    store.outbox.failed(message_id, "HTTP 500", time.time() + 60)
    assert store.outbox.due() == [] and store.outbox.get(message_id).attempts == 1
    store.outbox.failed(message_id, "HTTP 500", time.time() - 1)
    assert [m.id for m in store.outbox.due()] == [message_id]
    store.outbox.delivered(message_id)
    delivered = store.outbox.get(message_id)
    assert delivered.delivered_at is not None and delivered.attempts == 3 and store.outbox.due() == []


def test_keys_and_files(store):
    from ref2img.auth.keys import KeyVerifier, create_key

    key = create_key(store, "ci")
    verifier = KeyVerifier(store)
    assert verifier.verify(key.app_key, key.app_secret)
    assert not verifier.verify(key.app_key, "sk_wrong")
    assert store.keys.get(key.app_key).secret_hash != key.app_secret.encode()
    assert store.keys.revoke(key.app_key) and not store.keys.revoke(key.app_key)
    assert not KeyVerifier(store).verify(key.app_key, key.app_secret)
    store.files.add("f1", key.app_key, "uploads/f1.png")
    assert store.files.get("f1").name == "uploads/f1.png"


def test_feeds_wake_waiters(store):
    seen = store.tasks.queued.version
    threading.Timer(0.05, lambda: new_task(store)).start()
    assert store.tasks.queued.wait(seen, timeout=5) != seen


def test_claim_by_id_drops_duplicates_and_takes_over_dead_leases(store):
    task, _ = new_task(store)
    assert store.tasks.claim(task.id, "w1", lease_s=0.05).lease_owner == "w1"
    assert store.tasks.claim(task.id, "w2", lease_s=30) is None  # running elsewhere: a duplicate message
    time.sleep(0.1)
    taken = store.tasks.claim(task.id, "w2", lease_s=30)  # w1's lease ran out: its worker died
    assert taken.lease_owner == "w2" and taken.attempts == 2
    assert not store.tasks.finish(task.id, "w1", TaskStatus.SUCCEEDED, result=[])
    assert store.tasks.finish(task.id, "w2", TaskStatus.SUCCEEDED, result=[])
    assert store.tasks.claim(task.id, "w3", lease_s=30) is None  # finished


def test_a_stopping_worker_gives_its_task_back_uncounted(store):
    task, _ = new_task(store)
    store.tasks.mark_sent([task.id])
    running = store.tasks.claim(task.id, "w1", lease_s=30)
    assert running.attempts == 1
    store.tasks.set_progress(task.id, "w1", 40)
    assert not store.tasks.release(task.id, "w2")  # only the lease owner gives it back
    assert store.tasks.release(task.id, "w1")
    back = store.tasks.get(task.id)
    assert back.status == TaskStatus.QUEUED and back.lease_owner is None and back.progress == 0
    assert back.attempts == 0  # a stop is no failed attempt
    assert store.tasks.unsent_queued(older_than_s=10**9) == [(task.id, "local", None)]  # sent again to a live worker
    assert not store.tasks.release(task.id, "w1")  # no longer running
    assert store.tasks.claim(task.id, "w2", lease_s=30).attempts == 1


def test_unsent_queued_tasks_are_found_for_resending(store):
    first, _ = new_task(store)
    second, _ = new_task(store)
    third, _ = new_task(store, route="cloud")
    store.tasks.mark_sent([first.id])
    assert store.tasks.unsent_queued(older_than_s=60) == [(second.id, "local", None), (third.id, "cloud", None)]
    time.sleep(0.05)
    assert {task_id for task_id, _, _ in store.tasks.unsent_queued(older_than_s=0.01)} == {
        first.id,
        second.id,
        third.id,
    }


def test_each_route_has_its_own_queue(store):
    local, _ = new_task(store)
    cloud, _ = new_task(store, route="cloud")
    later_cloud, _ = new_task(store, route="cloud")
    assert store.tasks.position(store.tasks.get(later_cloud.id)) == 1  # behind the cloud task only
    assert store.tasks.active_count("cloud") == (2, 0)
    assert store.tasks.claim_next("gpu", lease_s=30).id == local.id
    assert store.tasks.claim_next("gpu", lease_s=30) is None  # a GPU worker never takes a cloud task
    assert store.tasks.claim_next("follower", lease_s=30, route="cloud").id == cloud.id
    assert store.tasks.active_count("cloud") == (1, 1)


def test_a_generation_naming_a_preset_waits_for_a_worker_holding_it(store):
    sdxl, _ = new_task(store, preset="sdxl")
    zimage, _ = new_task(store, preset="zimage-turbo")
    later_zimage, _ = new_task(store, preset="zimage-turbo")
    any_worker, _ = new_task(store)  # control maps, repaint: no preset
    assert store.tasks.position(store.tasks.get(later_zimage.id)) == 1  # behind its own preset's task only
    assert store.tasks.active_count("local", "zimage-turbo") == (2, 0)
    assert store.tasks.unsent_queued(older_than_s=float("inf"))[0] == (sdxl.id, "local", "sdxl")
    assert store.tasks.claim_next("z", lease_s=30, presets=("zimage-turbo",)).id == zimage.id
    assert store.tasks.claim_next("z", lease_s=30, presets=("zimage-turbo",)).id == later_zimage.id
    assert store.tasks.claim_next("z", lease_s=30, presets=("zimage-turbo",)).id == any_worker.id
    assert store.tasks.claim_next("z", lease_s=30, presets=("zimage-turbo",)) is None  # never the sdxl task
    assert store.tasks.claim_next("s", lease_s=30, presets=("sdxl",)).id == sdxl.id


def test_a_cloud_task_falls_back_to_the_local_queue_once(store):
    task, _ = new_task(store, route="cloud")
    store.tasks.claim_next("follower", lease_s=30, route="cloud")
    assert not store.tasks.fall_back(task.id, "someone-else")  # only the lease owner moves it
    assert store.tasks.fall_back(task.id, "follower")
    assert not store.tasks.fall_back(task.id, "follower")  # already moved: never twice
    moved = store.tasks.get(task.id)
    assert (moved.status, moved.route, moved.lease_owner, moved.fallbacks) == (TaskStatus.QUEUED, "local", None, 1)
    assert store.tasks.unsent_queued(older_than_s=float("inf")) == [(task.id, "local", None)]
    assert store.tasks.claim_next("gpu", lease_s=30).id == task.id
    assert store.tasks.route_counts() == ({"local": 1}, 1)


def test_a_cloud_task_keeps_its_remote_id_through_a_dead_worker_and_cancels_at_once(store):
    task, _ = new_task(store, route="cloud")
    store.tasks.claim_next("follower", lease_s=0.05, route="cloud")
    store.tasks.remember_remote(task.id, "follower", "tm-42")
    store.tasks.remember_remote(task.id, "intruder", "tm-99")  # not the lease owner: changes nothing
    time.sleep(0.1)
    assert store.tasks.recover() == 1  # the follower died: back to the cloud queue
    again = store.tasks.claim_next("follower-2", lease_s=30, route="cloud")
    assert (again.id, again.remote_id) == (task.id, "tm-42")  # the same cloud task is followed again
    cancelled = store.tasks.request_cancel(task.id, "ak_a")
    assert cancelled.status == TaskStatus.CANCELLED  # nothing runs here: ended at once, not between steps
    assert store.tasks.should_stop(task.id, "follower-2") == TaskStatus.CANCELLED


def test_the_databases_own_errors_never_leave_the_store(store):
    from ref2img.tasks.store.models import AppKeyRow

    row = dict(app_key="ak_twice", name="", salt=b"s", secret_hash=b"h", webhook_key=b"w", created_at=0.0)
    store.keys.add(AppKeyRow(**row))
    with pytest.raises(StoreConflict):
        store.keys.add(AppKeyRow(**row))


def test_a_store_that_cannot_reach_its_database_says_busy():
    with pytest.raises(StoreBusy, match="unreachable"):
        Store("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_callbacks_are_claimed_by_one_node_at_a_time(store):
    task, _ = new_task(store, callback="https://hooks.example/cb")
    store.tasks.claim_next("w1", 30)
    store.tasks.finish(task.id, "w1", TaskStatus.SUCCEEDED, result=[])
    assert [m.id for m in store.outbox.claim(lease_s=60)] == [f"msg_{task.id}"]
    assert store.outbox.claim(lease_s=60) == []  # reserved by the first node


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
        with stores[0].db.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0008"
        new_task(stores[1])
        assert stores[2].tasks.count_by_status() == {TaskStatus.QUEUED: 1}
    finally:
        for instance in stores:
            instance.close()
        if cleanup:
            with create_engine(postgres).begin() as connection:
                connection.execute(text(f"DROP SCHEMA {cleanup} CASCADE"))


def test_the_migrations_build_the_tables_the_models_describe(tmp_path):
    """A fresh database runs every revision in order; the result must be what models.py declares, so a
    revision that forgets a column (or adds one twice) fails here."""
    from sqlalchemy import inspect

    from ref2img.tasks.store.models import Base

    store = Store(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        found = inspect(store.db.engine)
        for table in Base.metadata.sorted_tables:
            columns = {column["name"]: column["nullable"] for column in found.get_columns(table.name)}
            assert columns == {column.name: column.nullable for column in table.columns}, table.name
        assert set(found.get_table_names()) - {"alembic_version"} == set(Base.metadata.tables)
    finally:
        store.close()


def test_a_sign_in_link_works_once_and_only_while_fresh(store):
    token = store.studio.issue_link()
    assert store.studio.redeem_link(token) and not store.studio.redeem_link(token)
    assert not store.studio.redeem_link("made-up")
    stale = store.studio.issue_link(ttl_s=0.05)
    time.sleep(0.1)
    assert not store.studio.redeem_link(stale)


def test_a_studio_session_ends_for_good(store):
    session_id = store.studio.open_session("ak_a", ttl_s=600)
    assert store.studio.session_live(session_id, "ak_a") and not store.studio.session_live(session_id, "ak_b")
    store.studio.end_session(session_id)
    assert not store.studio.session_live(session_id, "ak_a")
    expired = store.studio.open_session("ak_a", ttl_s=0.05)
    time.sleep(0.1)
    assert not store.studio.session_live(expired, "ak_a")


def test_a_cancel_that_meets_a_claim_still_stops_the_task(store):
    """The task is queued when cancel reads it, and a worker claims it just after: the cancel must
    not be lost (it was: `finish` found it running and changed nothing)."""
    task, _ = new_task(store)
    read = store.tasks.get

    def read_then_claimed(task_id, app_key=None):
        row = read(task_id, app_key)
        store.tasks.get = read  # once
        assert store.tasks.claim(task_id, "worker-1", 30) is not None  # the worker wins the race
        return row

    store.tasks.get = read_then_claimed
    store.tasks.request_cancel(task.id, "ak_a")
    assert store.tasks.should_stop(task.id, "worker-1") == TaskStatus.CANCELLED


def test_retention_lets_go_of_ended_tasks_their_files_and_old_uploads(store, tmp_path):
    """Past the period: a finished task goes with its results, previews and inputs, and an upload goes;
    a running task, and one whose callback is still being retried, stay; so does all that is recent."""
    import time

    from PIL import Image

    from ref2img.tasks.retention import DAY_S, Retention
    from ref2img.tasks.storage import open_storage

    storage = open_storage(tmp_path, b"k" * 32)
    done, _ = new_task(store)
    calling, _ = new_task(store, callback="https://hooks.example/cb")
    running, _ = new_task(store)
    for task in (done, calling):
        store.tasks.claim(task.id, "w1", 30)
        name = storage.save_result(task.id, 0, Image.new("RGB", (8, 8)))
        storage.save_preview(task.id, 3, Image.new("RGB", (8, 8)))
        storage.save_input(task.id, "reference_image", b"png", "png")
        assert store.tasks.finish(task.id, "w1", TaskStatus.SUCCEEDED, result=[name])
    store.tasks.claim(running.id, "w1", 30)
    upload = storage.save_upload("f_old", b"bytes", "png")
    store.files.add("f_old", "ak_a", upload)

    retention = Retention(store, storage, days=1)
    assert retention.run_once() == (0, 0)  # nothing is a day old yet
    patient = Retention(store, storage, days=1, task_life_s=3 * DAY_S)  # tasks may wait 3 days for inputs
    assert patient.run_once(now=time.time() + 2 * DAY_S)[1] == 0 and store.files.get("f_old") is not None
    store.tasks.delete([])  # nothing to delete: no error
    assert retention.run_once(now=time.time() + 2 * DAY_S) == (0, 1)  # done went with `patient`'s round
    assert store.tasks.get(done.id) is None and store.files.get("f_old") is None
    for folder in ("results", "previews", "inputs"):
        assert not (storage.root / folder / done.id).exists()
        assert (storage.root / folder / calling.id).exists()  # its callback is not done: kept, files too
    with pytest.raises(FileNotFoundError):
        storage.read(upload)
    assert store.tasks.get(calling.id) is not None and store.tasks.get(running.id) is not None
    [message] = store.outbox.due()
    store.outbox.delivered(message.id)
    assert retention.run_once(now=time.time() + 2 * DAY_S) == (1, 0)  # delivered: now it goes too
    assert store.tasks.get(calling.id) is None and store.outbox.get(message.id) is None
