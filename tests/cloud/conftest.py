"""The image host of the server tests, for the cloud tests too (the fake cloud fetches from it)."""

from ..server.conftest import image_host  # noqa: F401  (shared fixture)
