"""Shared fixtures: tiny random-weight models built offline once per session, and test photos."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The watermark costs about 0.3 s an image on this CPU: the servers and commands of other tests leave it
# out (their images are not what they test); tests/test_provenance.py turns it on (`--watermark`).
os.environ.setdefault("REF2IMG_WATERMARK", "0")
# `generate` and `mcp` keep a development C2PA signing chain in the user's config folder: the suite's own.
os.environ.setdefault("XDG_CONFIG_HOME", tempfile.mkdtemp(prefix="ref2img-test-config-"))
# Every server and command of the suite signs with one development chain, made once (as an operator gives
# every node the same --c2pa-cert/--c2pa-key), rather than each making its own at start.
if "REF2IMG_C2PA_CERT" not in os.environ:
    try:
        from ref2img.provenance.certs import make_dev_certificate

        _cert, _key = make_dev_certificate(Path(tempfile.mkdtemp(prefix="ref2img-test-c2pa-")))
        os.environ["REF2IMG_C2PA_CERT"], os.environ["REF2IMG_C2PA_KEY"] = str(_cert), str(_key)
    except ImportError:  # no cryptography: each server makes its own, or signs nothing
        pass


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())  # a person: pose, depth and edges all have something to find


@pytest.fixture(scope="session")
def coffee() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee())


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory):
    from ref2img.engines.local.random_models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-sd15"), "sd15")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    from ref2img.engines.local.random_models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-sdxl"), "sdxl")


@pytest.fixture(scope="session")
def tiny_zimage(tmp_path_factory):
    import torch

    from ref2img.engines.local.families import family_named

    return family_named("zimage").build_random(tmp_path_factory.mktemp("tiny-zimage"), "tiny", torch.float32)


@pytest.fixture(scope="session")
def engine(tiny_sd15):
    from ref2img.engines.local import LocalEngine

    return LocalEngine(str(tiny_sd15), device="cpu").load()


@pytest.fixture(scope="session")
def engine_xl(tiny_sdxl):
    from ref2img.engines.local import LocalEngine

    return LocalEngine(str(tiny_sdxl), device="cpu").load()


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL database of the run's own, dropped after it (tests/services.py)."""
    from .services import PostgresDatabase

    database = PostgresDatabase()
    yield database.url
    database.drop()


@pytest.fixture
def redis_server(tmp_path):
    """A `redis-server` of the test's own, on a free port (tests/services.py)."""
    from .services import RedisServer

    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)
