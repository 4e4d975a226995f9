"""App keys and their verification: the one home of credentials (the HTTP dependency that reads them
off a request is `ref2img.server.auth`)."""

from ref2img.auth.keys import KeyVerifier, NewKey, create_key

__all__ = ["KeyVerifier", "NewKey", "create_key"]
