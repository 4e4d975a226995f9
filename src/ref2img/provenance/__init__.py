"""Provenance: every image the engine makes is marked as AI-generated, twice (docs/provenance.md).

- `manifest.py`: a C2PA manifest (the Content Authenticity Initiative's `c2pa-python`), signed with the
  operator's certificate, or a development one (`certs.py`, `ref2img provenance init`).
- `watermark.py`: an invisible watermark in the pixels (the `invisible-watermark` package), which
  survives when a platform strips the metadata; its 32-bit id names the task.
- `marks.py`: both, applied where results are stored, for every way a task runs.
- `content_filter.py`: the optional content filter, for prompts and images.

Heavy imports (c2pa, onnxruntime, transformers) happen only when a mark or a filter is used.
"""
