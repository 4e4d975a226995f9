"""`ref2img provenance`: make a development signing certificate, and read both marks off an image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ref2img.cli._common import EXIT_USAGE, DataDirOption, DbOption, fail, new_group, out

app = new_group("Mark images as AI-generated (C2PA, watermark) and read the marks back.")


@app.command("init")
def provenance_init(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="where the certificate and key go")] = Path(
        "ref2img-data/provenance"
    ),
) -> None:
    """Make a development C2PA signing certificate (a CA and a signer it issued) in DIR. Validators call
    what it signs valid, not trusted: for production, pass --c2pa-cert and --c2pa-key of your own."""
    from ref2img.provenance.certs import make_dev_certificate

    cert, key = make_dev_certificate(folder)
    out.print(f"certificate chain: {cert}\nprivate key:       {key}", highlight=False)
    out.print(f"use: ref2img serve --c2pa-cert {cert} --c2pa-key {key}", highlight=False)


@app.command("check")
def provenance_check(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="a PNG or JPEG")],
    data_dir: DataDirOption = Path("ref2img-data"),
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the findings as JSON")] = False,
) -> None:
    """Read both marks: the C2PA manifest and its validation state, and the watermark's id, with the
    task it names when the server's store is at hand (--data-dir or --db)."""
    from PIL import Image, UnidentifiedImageError

    from ref2img.provenance.manifest import read_manifest
    from ref2img.provenance.watermark import detect

    if not image.is_file():
        fail(f"IMAGE: no file {str(image)!r}", EXIT_USAGE)
    data = image.read_bytes()
    try:
        picture = Image.open(image)
        picture.load()
    except (UnidentifiedImageError, OSError):
        fail(f"IMAGE: {str(image)!r} is not an image", EXIT_USAGE)
    mime = Image.MIME.get(picture.format or "", "image/png")  # what the file is, whatever its name says
    findings: dict[str, Any] = {"image": str(image)}
    report = read_manifest(data, mime)
    findings["c2pa"] = (
        None
        if report is None
        else {
            "state": report.state,
            "ai_generated": report.ai_generated,
            "problems": report.problems,
            "signed_by": report.manifest.get("signature_info", {}).get("common_name"),
            "generation": report.generation,
        }
    )
    found = detect(picture)
    findings["watermark"] = {"id": found.mark_id, "confidence": round(found.confidence, 1)}
    if found.mark_id is not None:
        findings["watermark"]["tasks"] = _tasks_of(found.mark_id, data_dir, db)
    if as_json:
        print(json.dumps(findings, indent=2))
        return
    c2pa = findings["c2pa"]
    if c2pa is None:
        out.print("C2PA manifest: none", highlight=False)
    else:
        ai = "AI-generated (trainedAlgorithmicMedia)" if c2pa["ai_generated"] else "not stated as AI-generated"
        out.print(f"C2PA manifest: {c2pa['state']}, {ai}, signed by {c2pa['signed_by']}", highlight=False)
        for problem in c2pa["problems"]:
            out.print(f"  problem: {problem}", highlight=False)
    mark = findings["watermark"]
    if mark["id"] is None:
        out.print(f"watermark: none found (confidence {mark['confidence']})", highlight=False)
    else:
        tasks = ", ".join(mark.get("tasks") or []) or "no task of this store"
        out.print(f"watermark: {mark['id']} (confidence {mark['confidence']}) -> {tasks}", highlight=False)


def _tasks_of(mark: str, data_dir: Path, db: str | None) -> list[str]:
    """The tasks of the store at hand whose id the watermark names; none when there is no store."""
    from ref2img.cli.keys import open_store

    if db is None and not (data_dir / "ref2img.db").is_file():
        return []
    return [task.id for task in open_store(data_dir, db).tasks.find_by_mark(mark)]
