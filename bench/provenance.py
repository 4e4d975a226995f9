"""The marks' cost per image and the watermark's survival (issue 30), on the test photos scikit-image
ships, at the output sizes users ask for.

    python bench/provenance.py            # 3 photos x 2 sizes; prints a table and JSON
    python bench/provenance.py --smoke    # one photo, one size: the suite keeps the script runnable
    python bench/provenance.py --unmarked 2000 --marked 40   # false ids and true reads (issue 40)
    python bench/provenance.py --unmarked 1000 --seed 2027 --one-thread   # another 1000, side by side

Rows: the watermark's embed time, the C2PA signing time (development chain), and the detection rate
after no change, JPEG at quality 75, a resize to 50% and a centred 10% crop.

`--unmarked N` reads N images that carry no mark (crops of the photos scikit-image ships, uniform and
Gaussian noise, renders of gradients and shapes, and the smooth noise the tiny random-weight models
paint) and counts how many `detect` names an id: the false-id rate. `--marked M` marks M such photo
crops and counts the reads that give back their own id after each change: the true-positive rate.
Progress goes to stderr every 100 images, so that a cut-short run still tells its figures so far.
`--one-thread` runs RivaGAN on one non-spinning thread: for runs side by side, one a core.
"""

from __future__ import annotations

import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
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


PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "camera",
    "rocket",
    "immunohistochemistry",
    "coins",
    "moon",
    "page",
    "hubble_deep_field",
    "horse",
    "text",
    "checkerboard",
    "clock",
    "grass",
    "gravel",
    "brick",
    "colorwheel",
)


def photo_crop(draw: random.Random) -> Image.Image:
    picture = Image.fromarray(np.asarray(getattr(data, draw.choice(PHOTOS))()).astype(np.uint8)).convert("RGB")
    width, height = picture.size
    side = draw.randint(min(width, height) // 3, min(width, height))
    left, top = draw.randint(0, width - side), draw.randint(0, height - side)
    out = draw.choice((256, 384, 512, 768))
    return picture.crop((left, top, left + side, top + side)).resize((out, out), Image.Resampling.BICUBIC)


def noise(draw: random.Random) -> Image.Image:
    rng = np.random.default_rng(draw.getrandbits(32))
    size = draw.choice((256, 512))
    if draw.random() < 0.5:
        pixels = rng.integers(0, 256, (size, size, 3))
    else:
        pixels = np.clip(rng.normal(128, draw.uniform(10, 80), (size, size, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def render(draw: random.Random) -> Image.Image:
    size = draw.choice((256, 512, 768))
    x = np.linspace(0, 1, size)
    colours = [np.array([draw.randint(0, 255) for _ in range(3)]) for _ in range(2)]
    ramp = x[None, :, None] if draw.random() < 0.5 else x[:, None, None]
    image = Image.fromarray(
        (colours[0] * (1 - ramp) + colours[1] * ramp).astype(np.uint8).repeat(size, 0 if ramp.shape[0] == 1 else 1)
    )
    canvas = ImageDraw.Draw(image)
    for _ in range(draw.randint(1, 12)):
        box = sorted(draw.randint(0, size) for _ in range(2)), sorted(draw.randint(0, size) for _ in range(2))
        shape = (box[0][0], box[1][0], box[0][1], box[1][1])
        fill = tuple(draw.randint(0, 255) for _ in range(3))
        (canvas.ellipse if draw.random() < 0.5 else canvas.rectangle)(shape, fill=fill)
    return image


def tiny_model_output(draw: random.Random) -> Image.Image:
    """What the tiny random-weight models paint: noise at a low resolution, decoded up to the output size."""
    rng = np.random.default_rng(draw.getrandbits(32))
    low = Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8))
    return low.resize((512, 512), Image.Resampling.BILINEAR)


KINDS = {"photo": photo_crop, "noise": noise, "render": render, "tiny-model": tiny_model_output}


def unmarked_and_marked(unmarked: int, marked: int, seed: int = 2026) -> dict:
    """The true reads of `marked` marked photo crops first (quick: a mark reads at the first try), then the
    false ids among `unmarked` images, with the figures so far on stderr every 100 images."""
    draw = random.Random(seed)
    started = time.perf_counter()
    true_reads = {name: 0 for name in CHANGES}
    for _ in range(marked):
        mark = new_mark_id()
        image = embed(photo_crop(draw), mark)
        for name, change in CHANGES.items():
            true_reads[name] += detect(change(image)).mark_id == mark
    true_positive_rate = {name: round(count / max(1, marked), 3) for name, count in true_reads.items()}
    print(f"marked {marked}: true-positive rate {true_positive_rate}", file=sys.stderr, flush=True)
    false_ids = {kind: 0 for kind in KINDS}
    read = {kind: 0 for kind in KINDS}
    for index in range(unmarked):
        kind = list(KINDS)[index % len(KINDS)]
        found = detect(KINDS[kind](draw))
        read[kind] += 1
        false_ids[kind] += found.mark_id is not None
        if (index + 1) % 100 == 0:
            print(
                f"unmarked {index + 1}/{unmarked}: false ids {sum(false_ids.values())} "
                f"{ {kind: f'{false_ids[kind]}/{read[kind]}' for kind in KINDS} } "
                f"({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    figures = {
        "unmarked_images": unmarked,
        "false_ids": sum(false_ids.values()),
        "false_id_rate": round(sum(false_ids.values()) / max(1, unmarked), 5),
        "false_ids_by_kind": {kind: f"{false_ids[kind]}/{read[kind]}" for kind in KINDS},
        "marked_images": marked,
        "true_positive_rate": true_positive_rate,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for name, value in figures.items():
        print(f"{name:>20}: {value}")
    print(json.dumps(figures))
    return figures


def one_thread_each() -> None:
    """RivaGAN's ONNX sessions on one thread that does not spin: several runs side by side (the way to
    reach 2,000 images on a 2-core machine) then share the cores instead of spinning against each other
    (two runs with onnxruntime's defaults spent half the CPU in the kernel)."""
    import onnxruntime
    from imwatermark import rivaGan

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    folder = Path(rivaGan.__file__).parent
    riva = rivaGan.RivaWatermark
    riva.encoder = onnxruntime.InferenceSession(str(folder / "rivagan_encoder.onnx"), options)
    riva.decoder = onnxruntime.InferenceSession(str(folder / "rivagan_decoder.onnx"), options)


def option(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


if __name__ == "__main__":
    if "--one-thread" in sys.argv:
        one_thread_each()
    if "--unmarked" in sys.argv or "--marked" in sys.argv:
        unmarked_and_marked(option("--unmarked", 0), option("--marked", 0), option("--seed", 2026))
    else:
        main(smoke="--smoke" in sys.argv)
