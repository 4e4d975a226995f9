#!/usr/bin/env bash
# Fetch, into .whl/, the wheels that bench/gpu_check.sh needs and the device machine lacks (its image
# has torch, transformers, accelerate, peft, onnx, onnxruntime, opencv, scikit-image, httpx, typer,
# rich, prometheus-client, uvicorn's h11 and click). Versions follow this checkout's virtual
# environment, for CPython 3.12 on manylinux x86_64. Run it once here, then name `.whl` in carry.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PY:-.venv/bin/python}
packages=(diffusers pydantic pydantic-core annotated-types typing-inspection importlib-metadata
          fastapi starlette uvicorn sqlalchemy alembic mako python-multipart itsdangerous swagger-ui-bundle opentelemetry-api torchao)
pins=()
for name in "${packages[@]}"; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}' || true)
  pins+=("$name${version:+==$version}")
done
mkdir -p .whl
platforms=()
for tag in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 \
           manylinux_2_34_x86_64 manylinux_2_24_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
du -sh .whl
ls .whl
