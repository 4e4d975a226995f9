"""`ref2img provenance`: make a development signing certificate, and read both marks off an image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ref2img.cli._common import EXIT_USAGE, DataDirOption, DbOption, fail, new_group, out

app = new_group("Mark images as AI-generated (C2PA, watermark) and read the marks back.")

# `provenance check`'s exit status, so that a script can tell the cases apart (docs/provenance.md); 1 and 2
# keep their meaning across the CLI (a failure, bad input).
EXIT_VALID = 0  # a C2PA manifest that validates (its state Valid or Trusted)
EXIT_TAMPERED = 3  # a C2PA manifest that does not validate: the image or the manifest was changed
EXIT_WATERMARK_ONLY = 4  # no manifest (stripped, re-encoded), but the watermark names an id
EXIT_UNMARKED = 5  # neither mark


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
    task it names when the server's store is at hand (--data-dir or --db). Exit status: 0 a valid
    manifest, 3 a manifest that does not validate (tampered), 4 no manifest but a watermark, 5 neither."""
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
    else:
        _print_findings(findings)
    raise typer.Exit(_exit_status(findings))


def _exit_status(findings: dict[str, Any]) -> int:
    c2pa = findings["c2pa"]
    if c2pa is not None:
        # An untrusted signer (the development chain) is listed as a problem of a Valid manifest: the state
        # alone says whether the image and its manifest are as signed.
        return EXIT_VALID if c2pa["state"] in ("Valid", "Trusted") else EXIT_TAMPERED
    return EXIT_WATERMARK_ONLY if findings["watermark"]["id"] is not None else EXIT_UNMARKED


def _print_findings(findings: dict[str, Any]) -> None:
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
