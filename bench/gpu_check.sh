#!/usr/bin/env bash
# The GPU check, in device calls of at most 10 minutes: build the random full-shape models, run every
# mode of both families on CUDA (no error, exact sizes, dtypes as chosen), the cold start, the speed
# table (batch 1, then 4), the small-GPU figure, sdxl-fast and SD1.5, the remaining levers: in that
# order, as far as BUDGET_S allows; the log names every phase it skipped. Each phase writes its JSON
# into $OUT as it goes: log.txt, modes.json, cold-start.json, speed.json (the device tool brings back
# 8 files at most).
#
#   bash bench/gpu_wheels.sh                                 # here, once: the wheels the device lacks
#   device run (carry .whl):  bash bench/gpu_check.sh        # every phase the budget allows
#   PHASES="build offload families levers" bash bench/gpu_check.sh   # a second call: what was skipped
# The zimage phases come first: the diffusion-transformer family is the one with no GPU figure yet.
#   bash bench/gpu_check.sh --smoke                          # the same plumbing on the CPU, tiny models
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-570}
PHASES=${PHASES:-"build zimage-modes zimage-speed zimage-offload modes coldstart speed speed4 offload families levers"}
PY=${PY:-python3}
exec > >(tee -a "$OUT/log.txt") 2>&1

if [ "$SMOKE" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export REF2IMG_COMPILE_CACHE=${REF2IMG_COMPILE_CACHE:-/tmp/ref2img-compile-cache}
MODELS=${MODELS:-/tmp/ref2img-bench-models}

if [ "$SMOKE" = 1 ]; then
  SCALE=tiny; DEVICE=cpu; RUNS=1; BATCH=2; SDXL_ARCH=tiny-sdxl; SD15_ARCH=tiny; FAST_ARCH=tiny-sdxl; ZIMAGE_ARCH=tiny-zimage
  ZIMAGE_LEVERS=off; ZIMAGE_CAP=()
  CORE_LEVERS=off,skip-idle-controlnet,fuse-qkv,previews; EXTRA_LEVERS=channels-last; FAMILY_LEVERS=off,fuse-qkv
  COLD_ARGS=(--size 512 --steps 2); CAP_ARGS=(); MODES_ARGS=(--dtype bfloat16)
else
  SCALE=full; DEVICE=cuda; RUNS=2; BATCH=4; SDXL_ARCH=sdxl; SD15_ARCH=sd15; FAST_ARCH=sdxl-fast; ZIMAGE_ARCH=zimage
  ZIMAGE_LEVERS=off,compile-regional,fp8; ZIMAGE_CAP=(--memory-cap-gib 24)  # the issue's 24 GB card
  CORE_LEVERS=off,skip-idle-controlnet,compile-regional,all,previews
  EXTRA_LEVERS=channels-last,fuse-qkv,compile-full,cuda-graphs,inductor-tuning,fp8; FAMILY_LEVERS=off,all
  COLD_ARGS=(--size 1024); CAP_ARGS=(--memory-cap-gib 8); MODES_ARGS=()
fi
SD15_DIR=$MODELS/sd15-$SCALE
SDXL_DIR=$MODELS/sdxl-$SCALE
ZIMAGE_DIR=$MODELS/zimage-$SCALE

started=$SECONDS
# phase NAME MIN_SECONDS COMMAND...: run it if asked for and if at least MIN_SECONDS remain; the
# command is cut at the end of the budget, so a slow phase never takes the rest with it.
phase() {
  local name=$1 need=$2; shift 2
  case " $PHASES " in *" $name "*) ;; *) return 0 ;; esac
  local left=$((BUDGET_S - (SECONDS - started)))
  if [ "$left" -lt "$need" ]; then echo "== $name: skipped, ${left}s left of ${BUDGET_S}s (needs ${need}s)"; return 0; fi
  echo "== $name ($(date +%T), ${left}s left)"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$left" "$@"
  echo "== $name: exit $? after $((SECONDS - t0))s"
}

"$PY" - <<'EOF'
import torch, platform
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor())
EOF

phase build 60 "$PY" -c "
import sys, time, torch
from pathlib import Path
from ref2img.engines.local.families import family_named
cuda = '$DEVICE' == 'cuda'
for family, folder in (('zimage', '$ZIMAGE_DIR'), ('sd15', '$SD15_DIR'), ('sdxl', '$SDXL_DIR')):
    dtype = (torch.bfloat16 if family == 'zimage' else torch.float16) if cuda else torch.float32
    if not (Path(folder) / 'ref2img-preset.json').exists():
        t = time.perf_counter(); family_named(family).build_random(Path(folder), '$SCALE', dtype)
        print(f'built {family} ($SCALE) in {time.perf_counter() - t:.0f} s', flush=True)
"
# Every speed run adds itself to speed.json (one file: the device tool brings back 8 at most).
BENCH=("$PY" bench/engine.py --device "$DEVICE" --runs "$RUNS" --models-dir "$MODELS" --json "$OUT/speed.json")
# zimage: every mode at 1000x600 (the full-scale build has no subject model yet: refused by name, reported), then
# s/image and peak memory against plain ZImageControlNetPipeline at 1024², then under a 24 GB cap.
phase zimage-modes 60 "$PY" bench/modes.py --model "$ZIMAGE_DIR" --device "$DEVICE" "${MODES_ARGS[@]}" \
  --json "$OUT/zimage-modes.json"
phase zimage-speed 150 "${BENCH[@]}" --arch "$ZIMAGE_ARCH" --batches 1 --levers "$ZIMAGE_LEVERS" --row-timeout 300
phase zimage-offload 90 "${BENCH[@]}" --arch "$ZIMAGE_ARCH" --no-baseline --levers off --runs 1 --offload auto \
  "${ZIMAGE_CAP[@]}" --row-timeout 300

phase modes 45 "$PY" bench/modes.py --model "$SD15_DIR" --model "$SDXL_DIR" --device "$DEVICE" "${MODES_ARGS[@]}" \
  --json "$OUT/modes.json"
phase coldstart 120 "$PY" bench/cold_start.py --model "$SDXL_DIR" --device "$DEVICE" --compile regional \
  "${COLD_ARGS[@]}" --timeout 300 --json "$OUT/cold-start.json"
phase speed 150 "${BENCH[@]}" --arch "$SDXL_ARCH" --batches 1 --levers "$CORE_LEVERS" --row-timeout 240
phase speed4 150 "${BENCH[@]}" --arch "$SDXL_ARCH" --batches "$BATCH" --levers "$FAMILY_LEVERS" --row-timeout 240
phase offload 90 "${BENCH[@]}" --arch "$SDXL_ARCH" --no-baseline --levers off --runs 1 --offload auto "${CAP_ARGS[@]}" \
  --row-timeout 300
phase families 90 "${BENCH[@]}" --arch "$FAST_ARCH" --levers "$FAMILY_LEVERS" --row-timeout 200
phase families 60 "${BENCH[@]}" --arch "$SD15_ARCH" --levers "$FAMILY_LEVERS" --row-timeout 200
phase levers 120 "${BENCH[@]}" --arch "$SDXL_ARCH" --no-baseline --levers "off,$EXTRA_LEVERS" --row-timeout 240
echo "== done in $((SECONDS - started))s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
