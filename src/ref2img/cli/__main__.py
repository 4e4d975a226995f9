"""`python -m ref2img.cli …`, the same as the `ref2img` command."""

from ref2img.cli import main

main()
