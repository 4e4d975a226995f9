"""The storage contract: a directory and S3 (a real moto S3 server on loopback) behave the same."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from ref2img.tasks.storage import DirectoryStorage, open_storage


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on loopback, with the AWS variables boto3 reads."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    patch = pytest.MonkeyPatch()
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        patch.setenv(name, value)
    import boto3

    boto3.client("s3").create_bucket(Bucket="ref2img-test")
    yield endpoint
    patch.undo()
    server.stop()


@pytest.fixture(params=["directory", "s3"])
def storage(request, tmp_path):
    if request.param == "directory":
        return open_storage(tmp_path, b"k" * 32)
    request.getfixturevalue("s3_endpoint")
    return open_storage(f"s3://ref2img-test/run-{time.time_ns()}", b"k" * 32)


def test_results_and_uploads_round_trip(storage):
    name = storage.save_result("t1", 0, Image.new("RGB", (8, 4), "red"))
    assert name == "results/t1/1.png"
    assert storage.read(name)[:4] == b"\x89PNG"
    upload = storage.save_upload("f1", b"bytes", "jpg")
    assert storage.read(upload) == b"bytes"
    with pytest.raises(FileNotFoundError):
        storage.read("results/none/1.png")


def test_discard_deletes_and_ignores_what_is_gone(storage):
    kept = storage.save_result("t2", 0, Image.new("RGB", (8, 4), "red"))
    dropped = [storage.save_result("t3", index, Image.new("RGB", (8, 4), "blue")) for index in range(2)]
    storage.discard([*dropped, "results/t3/9.png"])  # one that never was: no error
    for name in dropped:
        with pytest.raises(FileNotFoundError):
            storage.read(name)
    assert storage.read(kept)[:4] == b"\x89PNG"


def test_delete_folder_removes_one_tasks_files_only(storage):
    gone = [storage.save_result("t4", index, Image.new("RGB", (8, 4))) for index in range(2)]
    kept = storage.save_result("t40", 0, Image.new("RGB", (8, 4)))  # a name that starts the same
    storage.delete_folder("results/t4")
    storage.delete_folder("results/never")  # nothing there: no error
    for name in gone:
        with pytest.raises(FileNotFoundError):
            storage.read(name)
    assert storage.read(kept)[:4] == b"\x89PNG"


def test_signed_urls(storage):
    url = storage.signed_url("http://api.example", "results/t1/1.png", ttl_s=60)
    query = dict(part.split("=") for part in url.split("?")[1].split("&"))
    assert url.startswith("http://api.example/v1/files/results/t1/1.png?")
    assert storage.check_signature("results/t1/1.png", query["expires"], query["sig"])
    assert not storage.check_signature("results/t1/2.png", query["expires"], query["sig"])
    assert not storage.check_signature("results/t1/1.png", int(query["expires"]) + 1, query["sig"])
    expired = storage.signed_url("http://x", "a", ttl_s=-1).split("?")[1]
    fields = dict(part.split("=") for part in expired.split("&"))
    assert not storage.check_signature("a", fields["expires"], fields["sig"])


def test_directory_refuses_paths_outside_its_root(tmp_path):
    storage = DirectoryStorage(tmp_path / "files", b"k" * 32)
    (tmp_path / "secret.txt").write_text("no")
    with pytest.raises(FileNotFoundError):
        storage.read("../secret.txt")


def test_writes_of_one_name_at_once_all_succeed(storage):
    """Two requests keeping the same inline image write the same content-addressed name at the same
    moment (the soak met it as a 500): each write succeeds and the file is whole."""
    from concurrent.futures import ThreadPoolExecutor

    data = bytes(range(256)) * 512
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: storage.write("uploads/same.png", data), range(64)))
    assert storage.read("uploads/same.png") == data
