#!/usr/bin/env python3
"""Compatibility import shim: the client lives in tomoviee_img2img_client.py."""

try:
    from scripts.tomoviee_img2img_client import TomovieeClient, TomovieeImg2ImgClient, main
except ImportError:
    from tomoviee_img2img_client import TomovieeClient, TomovieeImg2ImgClient, main

__all__ = ["TomovieeClient", "TomovieeImg2ImgClient"]

if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv))
