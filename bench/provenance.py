"""The marks' cost per image and the watermark's survival (issue 30), on the test photos scikit-image
ships, at the output sizes users ask for.

    python bench/provenance.py            # 3 photos x 2 sizes; prints a table and JSON
    python bench/provenance.py --smoke    # one photo, one size: the suite keeps the script runnable

Rows: the watermark's embed time, the C2PA signing time (development chain), and the detection rate
after no change, JPEG at quality 75, a resize to 50% and a centred 10% crop.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from skimage import data

from ref2img.provenance.certs import make_dev_certificate
from ref2img.provenance.manifest import ImageFacts, ManifestSigner
from ref2img.provenance.watermark import detect, embed, new_mark_id


def jpeg75(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=75)
    return Image.open(io.BytesIO(buffer.getvalue()))


CHANGES = {
    "none": lambda image: image,
    "jpeg75": jpeg75,
    "resize50": lambda image: image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC),
    "crop10": lambda image: image.crop(
        (image.width // 20, image.height // 20, image.width - image.width // 20, image.height - image.height // 20)
    ),
}


def main(smoke: bool) -> dict:
    photos = [data.astronaut(), data.coffee(), data.chelsea()][: 1 if smoke else 3]
    sizes = [(512, 512)] if smoke else [(1024, 1024), (1536, 1024)]
    with tempfile.TemporaryDirectory() as folder:
        signer = ManifestSigner(*make_dev_certificate(Path(folder)))
        embed(Image.new("RGB", (64, 64)), "00000000")  # the ONNX sessions load once, outside the timings
        embed_s, sign_s, found = [], [], {name: 0 for name in CHANGES}
        for index, photo in enumerate(photos):
            for size in sizes:
                image = Image.fromarray(photo).resize(size)
                mark = new_mark_id()
                started = time.perf_counter()
                marked = embed(image, mark)
                embed_s.append(time.perf_counter() - started)
                buffer = io.BytesIO()
                marked.save(buffer, "PNG")
                started = time.perf_counter()
                signer.sign(buffer.getvalue(), "image/png", ImageFacts(f"t{index}", "img2img", "0" * 64))
                sign_s.append(time.perf_counter() - started)
                for name, change in CHANGES.items():
                    found[name] += detect(change(marked)).mark_id == mark
    total = len(photos) * len(sizes)
    figures = {
        "images": total,
        "watermark_embed_s": round(sum(embed_s) / total, 3),
        "c2pa_sign_s": round(sum(sign_s) / total, 3),
        "detection_rate": {name: round(count / total, 3) for name, count in found.items()},
    }
    for name, value in figures.items():
        print(f"{name:>20}: {value}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(smoke="--smoke" in sys.argv)
