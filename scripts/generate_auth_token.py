#!/usr/bin/env python3
"""Print the `Authorization: Basic ...` token for an app key (computed locally, nothing is sent).

Usage: python scripts/generate_auth_token.py APP_KEY APP_SECRET
The token is a credential: it goes to stdout only, with a warning on stderr; do not paste it in logs.
"""

import base64
import sys


def generate_token(app_key: str, app_secret: str) -> str:
    return base64.b64encode(f"{app_key}:{app_secret}".encode()).decode()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("Usage: python scripts/generate_auth_token.py <app_key> <app_secret>", file=sys.stderr)
        sys.exit(1)
    print("warning: this token is a credential; keep it out of logs and repositories", file=sys.stderr)
    print(f"Authorization: Basic {generate_token(sys.argv[1], sys.argv[2])}")
