#!/usr/bin/env python3
"""Tomoviee AI - Image-to-Image API client (the skill's interface, built on the ref2img SDK).

Same classes, methods and command line as the published skill; underneath, the SDK adds retries,
client-side validation, smarter polling and typed errors. The base URL comes from REF2IMG_BASE_URL
(default: the skill's gateway https://openapi.wondershare.cc), so it works against a ref2img server too.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

try:
    from scripts import _sdk_path  # noqa: F401  (imported as scripts.tomoviee_img2img_client)
except ImportError:
    import _sdk_path  # noqa: F401  (run as a script)

from ref2img.client import Client, TaskError, WaitTimeoutError

SKILL_BASE_URL = "https://openapi.wondershare.cc"
__all__ = ["TomovieeClient", "TomovieeImg2ImgClient"]


class TomovieeImg2ImgClient:
    """Image-to-Image API client for Tomoviee AI (and ref2img servers)."""

    REQUEST_TIMEOUT = 60

    def __init__(self, app_key: str, app_secret: str, base_url: str | None = None):
        self.app_key = app_key
        self._client = Client(app_key, app_secret, base_url=base_url or os.environ.get("REF2IMG_BASE_URL")
                              or SKILL_BASE_URL, timeout=self.REQUEST_TIMEOUT)

    def image_to_image(self, prompt: str, reference_image: str | None = None, control_type: str = "2",
                       init_image: str | None = None, width: int = 1024, height: int = 1024, batch_size: int = 1,
                       control_intensity: float = 0.5, callback: str | None = None, params: str | None = None,
                       image: str | None = None, image_num: int | None = None) -> str:
        """Create an image-to-image task and return its task_id.

        Backward compatibility: `image` is treated as `reference_image`, `image_num` as `batch_size`.
        """
        reference = reference_image or image
        if not reference:
            raise ValueError("reference_image is required")
        if str(control_type) == "2" and not init_image:
            init_image = reference  # the cloud asks for an init image in subject mode
        return self._client.create(prompt, reference, str(control_type), init_image=init_image, width=width,
                                   height=height, batch_size=image_num if image_num is not None else batch_size,
                                   control_intensity=control_intensity, callback=callback, params=params)

    def get_result(self, task_id: str) -> dict[str, Any]:
        """The raw `data` object of the query (status, progress, reason, result as a JSON string, ...)."""
        return self._client.get(task_id).raw

    def poll_until_complete(self, task_id: str, poll_interval: int = 10, timeout: int = 600) -> dict[str, Any]:
        """Wait for the task; returns the `data` object on success, raises on failure or timeout.

        `poll_interval` is kept for compatibility: the SDK long-polls a ref2img server and paces its
        queries to the cloud from the reported progress, which notices the end sooner with fewer requests.
        """
        try:
            return self._client.wait(task_id, timeout=timeout).raw
        except TaskError as exc:
            raise Exception(f"Task failed: {exc.reason or 'Unknown error'}") from exc
        except WaitTimeoutError as exc:
            raise TimeoutError(f"Task did not complete within {timeout} seconds") from exc


# Backward-compatible alias
TomovieeClient = TomovieeImg2ImgClient


def main(argv: list[str]) -> int:
    if len(argv) < 5:
        print("Usage: python scripts/tomoviee_img2img_client.py <app_key> <app_secret> <prompt> "
              "<reference_image_url> [control_type] [width] [height] [batch_size] [control_intensity] "
              "[init_image_url]")
        return 1
    app_key, app_secret, prompt, reference_image = argv[1:5]
    control_type = argv[5] if len(argv) > 5 else "2"
    try:
        width = int(argv[6]) if len(argv) > 6 else 1024
        height = int(argv[7]) if len(argv) > 7 else 1024
        batch_size = int(argv[8]) if len(argv) > 8 else 1
        control_intensity = float(argv[9]) if len(argv) > 9 else 0.5
    except ValueError as exc:
        print(f"Error: {exc}")
        return 1
    init_image = argv[10] if len(argv) > 10 else None
    try:
        client = TomovieeImg2ImgClient(app_key, app_secret)
        print("Creating image-to-image task...")
        task_id = client.image_to_image(prompt=prompt, reference_image=reference_image, control_type=control_type,
                                        width=width, height=height, batch_size=batch_size,
                                        control_intensity=control_intensity, init_image=init_image)
        print(f"Task created: {task_id}")
        print("Polling for result...")
        result = client.poll_until_complete(task_id)
        print("\nTask completed")
        print(f"Progress: {result.get('progress', 'N/A')}%")
        print(json.dumps(json.loads(result["result"]), indent=2, ensure_ascii=False))
    except Exception as exc:  # noqa: BLE001 - the skill's command line prints one line, never a traceback
        print(f"Error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
