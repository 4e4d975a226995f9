"""The self-hosted, Tomoviee-compatible server. Importing it never imports torch."""

from ref2img.server.app import create_app
from ref2img.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
