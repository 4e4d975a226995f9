#!/usr/bin/env bash
# The GPU check, in device calls of at most 10 minutes. Phases in issue 39's priority order, the figures
# still missing first: the zimage family under a 24 GiB cap (every mode with its peak memory, s/image at
# 1024²), its subject model against plain Flux2KleinPipeline, its speed levers (each alone, all, all-fp8,
# the step cache) against plain ZImageControlNetPipeline, batch 4; then SDXL's speed table (batch 1 and 4,
# with FLOPs, peak shares and profiler summaries), the 8 GiB offload row, the cold start; then each SDXL
# lever alone, several controls, LoRAs, preset switches, the approximations, intensity 1.0, every mode of
# the UNet families, sdxl-fast and SD1.5: as far as BUDGET_S allows; the log names every phase it skipped.
# Each phase writes its JSON into $OUT as it goes: log.txt, speed.json, zimage-modes.json,
# zimage-capped.json, presets.json, cold-start.json, modes.json (the device tool brings back 8 files at most).
#
#   bash bench/gpu_wheels.sh                                 # here, once: the wheels the device lacks
#   device run (carry .whl):  PHASES="$CALL1" bash bench/gpu_check.sh   # the first call (under 9 minutes)
#   PHASES="$CALL2" bash bench/gpu_check.sh                              # the second call: the rest
# with CALL1="build zimage-capped zimage-offload zimage-subject zimage-levers zimage-speed4" (issue 39's items 1
# and 3) and CALL2="build speed speed4 offload coldstart levers controls lora presets presets-disk approximations
# intensity1 zimage-modes modes families".
#   bash bench/gpu_check.sh --smoke                          # the same plumbing on the CPU, tiny models
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-$([ "$SMOKE" = 1 ] && echo 1500 || echo 570)}  # the smoke runs every phase
PHASES=${PHASES:-"build zimage-capped zimage-offload zimage-subject zimage-levers zimage-speed4 speed speed4 offload coldstart levers controls lora presets presets-disk approximations intensity1 zimage-modes modes families"}
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

# A short device window may narrow the rows: any of these set in the environment replaces the list below
# (e.g. CORE_LEVERS=off,all ZIMAGE_LEVERS=off RUNS=2).
OVERRIDABLE=(CORE_LEVERS SPEED4_LEVERS ZIMAGE_LEVERS ZIMAGE4_LEVERS SUBJECT_LEVERS EXTRA_LEVERS PROFILED RUNS)
for name in "${OVERRIDABLE[@]}"; do declare "GIVEN_$name=${!name:-}"; done
if [ "$SMOKE" = 1 ]; then
  SCALE=tiny; DEVICE=cpu; RUNS=1; BATCH=2; SDXL_ARCH=tiny-sdxl; SD15_ARCH=tiny; FAST_ARCH=tiny-sdxl; ZIMAGE_ARCH=tiny-zimage
  ZIMAGE_LEVERS=off,step-cache; ZIMAGE4_LEVERS=off; SUBJECT_LEVERS=off; ZIMAGE_CAP=()
  CORE_LEVERS=off,skip-idle-controlnet,exact,fuse-qkv,previews; SPEED4_LEVERS=off,fuse-qkv; PROFILED=exact
  EXTRA_LEVERS=channels-last,cache-condition; FAMILY_LEVERS=off,fuse-qkv; CONTROLS_LEVERS=off,controls-1,controls-3; PRESETS_ARGS=(--smoke); APPROX_LEVERS=off,controlnet-cond-only,cfg-cut
  COLD_ARGS=(--size 512 --steps 2 --new-size 512x640); CAP_ARGS=(); MODES_ARGS=(--dtype bfloat16)
  STEPS_ARGS=(--steps 3); INTENSITY1_ARGS=(--no-flops --no-baseline)  # the plumbing, not the figures
else
  SCALE=full; DEVICE=cuda; RUNS=2; BATCH=4; SDXL_ARCH=sdxl; SD15_ARCH=sd15; FAST_ARCH=sdxl-fast; ZIMAGE_ARCH=zimage
  # Every lever that applies to the DiT alone on top of `off`, then together (issue 39's item 3).
  ZIMAGE_LEVERS=off,exact,compile-regional,cuda-graphs,fp8,all,all-fp8,all-graphs,step-cache,all-step-cache
  ZIMAGE4_LEVERS=off,all,all-fp8; SUBJECT_LEVERS=off,compile-regional,fp8; ZIMAGE_CAP=(--memory-cap-gib 24)  # the issue's 24 GB card
  # The issue's targets are `all` against `diffusers` at batch 1 and 4; exact, all-fp8 and all-graphs beside.
  CORE_LEVERS=off,exact,compile-regional,all,all-fp8,all-graphs,previews; SPEED4_LEVERS=off,exact,all,all-fp8
  PROFILED=all
  EXTRA_LEVERS=skip-idle-controlnet,cache-condition,cache-prompts,decode-on-device,preprocess-on-device,channels-last,fuse-qkv
  EXTRA_LEVERS=$EXTRA_LEVERS,compile-convs,compile-full,cuda-graphs,inductor-tuning,fp8
  FAMILY_LEVERS=off,all; APPROX_LEVERS=off,all,controlnet-cond-only,cfg-cut
  CONTROLS_LEVERS=off,controls-1,controls-2,controls-3; PRESETS_ARGS=(--arches sd15,sdxl --device cuda)
  COLD_ARGS=(--size 1024 --compile-after 2); CAP_ARGS=(--memory-cap-gib 8); MODES_ARGS=(); STEPS_ARGS=(); INTENSITY1_ARGS=()
fi
for name in "${OVERRIDABLE[@]}"; do given="GIVEN_$name"; [ -n "${!given}" ] && declare "$name=${!given}"; done
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

# The families the asked phases read, in the order those phases come: a call builds nothing it does not use.
wants() { local p; for p in "$@"; do case " $PHASES " in *" $p "*) return 0 ;; esac; done; return 1; }
FAMILIES=()
wants zimage-modes zimage-levers zimage-speed4 zimage-subject zimage-offload zimage-capped && FAMILIES+=("zimage:$ZIMAGE_DIR")
wants speed speed4 levers controls lora presets presets-disk approximations intensity1 offload coldstart modes \
  families && FAMILIES+=("sdxl:$SDXL_DIR")
wants presets presets-disk modes families && FAMILIES+=("sd15:$SD15_DIR")
phase build 60 "$PY" -c "
import sys, time, torch
from pathlib import Path
from ref2img.engines.local.families import family_named
cuda = '$DEVICE' == 'cuda'
for family, folder in (entry.split(':', 1) for entry in '${FAMILIES[*]}'.split()):
    dtype = (torch.bfloat16 if family == 'zimage' else torch.float16) if cuda else torch.float32
    if not (Path(folder) / 'ref2img-preset.json').exists():
        t = time.perf_counter(); family_named(family).build_random(Path(folder), '$SCALE', dtype)
        print(f'built {family} ($SCALE) in {time.perf_counter() - t:.0f} s', flush=True)
"
# Every speed run adds itself to speed.json (one file: the device tool brings back 8 at most); the
# profiled rows' traces stay in /tmp (too large to bring back), their summaries are in speed.json.
BENCH=("$PY" bench/engine.py --device "$DEVICE" --runs "$RUNS" --models-dir "$MODELS" --json "$OUT/speed.json"
       --profile-dir /tmp/ref2img-traces "${STEPS_ARGS[@]}")
# zimage (issue 39's items 1 and 3 first): under a 24 GB cap, every mode with its peak memory and s/image at
# 1024²; the subject model (FLUX.2 klein) against plain Flux2KleinPipeline; s/image and peak memory against
# plain ZImageControlNetPipeline at 1024², each lever alone, all, all-fp8, the step cache; batch 4.
phase zimage-capped 60 "$PY" bench/modes.py --model "$ZIMAGE_DIR" --device "$DEVICE" "${MODES_ARGS[@]}" \
  --offload auto "${ZIMAGE_CAP[@]}" --json "$OUT/zimage-capped.json"
phase zimage-offload 90 "${BENCH[@]}" --arch "$ZIMAGE_ARCH" --no-baseline --no-flops --levers off --runs 1 \
  --offload auto "${ZIMAGE_CAP[@]}" --row-timeout 300
phase zimage-subject 120 "${BENCH[@]}" --arch "$ZIMAGE_ARCH" --mode subject --batches 1 --no-flops \
  --levers "$SUBJECT_LEVERS" --row-timeout 300
phase zimage-levers 150 "${BENCH[@]}" --arch "$ZIMAGE_ARCH" --batches 1 --levers "$ZIMAGE_LEVERS" --row-timeout 300
phase zimage-speed4 90 "${BENCH[@]}" --arch "$ZIMAGE_ARCH" --batches "$BATCH" --no-flops --levers "$ZIMAGE4_LEVERS" \
  --row-timeout 300
# SDXL + union ControlNet at 1024², 30 steps, edge at 0.5: every row against plain diffusers, the job's
# FLOPs and each row's share of the peak; `all` traced with torch.profiler at batch 1 and at batch 4.
phase speed 150 "${BENCH[@]}" --arch "$SDXL_ARCH" --batches 1 --levers "$CORE_LEVERS" --profile "$PROFILED" \
  --row-timeout 240
phase speed4 150 "${BENCH[@]}" --arch "$SDXL_ARCH" --batches "$BATCH" --levers "$SPEED4_LEVERS" --profile "$PROFILED" \
  --row-timeout 240
# SDXL under an 8 GiB cap.
phase offload 90 "${BENCH[@]}" --arch "$SDXL_ARCH" --no-baseline --no-flops --levers off --runs 1 --offload auto \
  "${CAP_ARGS[@]}" --row-timeout 300
# First start, restart, and a size never seen (with --compile-after 2 on the GPU): the compile policy's figures.
phase coldstart 120 "$PY" bench/cold_start.py --model "$SDXL_DIR" --device "$DEVICE" --compile regional \
  "${COLD_ARGS[@]}" --timeout 300 --json "$OUT/cold-start.json"
# Each lever alone on top of `off`; the output-changing ones (--approximate) with their drift; intensity 1.0,
# where the ControlNet never idles.
phase levers 120 "${BENCH[@]}" --arch "$SDXL_ARCH" --no-baseline --no-flops --levers "off,$EXTRA_LEVERS" \
  --row-timeout 240
# Several controls at once (issue 26): s/image with 1, 2 and 3 ready maps in one union ControlNet pass.
phase controls 90 "${BENCH[@]}" --arch "$SDXL_ARCH" --no-baseline --no-flops --levers "$CONTROLS_LEVERS" \
  --row-timeout 240
# A request's LoRA: its step cost against `exact` (issue 29); then what a switch between two presets costs.
phase lora 60 "${BENCH[@]}" --arch "$SDXL_ARCH" --no-baseline --no-flops --levers off,exact,lora --row-timeout 240
phase presets 60 "$PY" bench/presets.py --models-dir "$MODELS" --json "$OUT/presets.json" "${PRESETS_ARGS[@]}"
phase presets-disk 60 "$PY" bench/presets.py --models-dir "$MODELS" --json "$OUT/presets.json" --max-parked 0 \
  "${PRESETS_ARGS[@]}"
phase approximations 90 "${BENCH[@]}" --arch "$SDXL_ARCH" --no-baseline --levers "$APPROX_LEVERS" --row-timeout 240
phase intensity1 90 "${BENCH[@]}" --arch "$SDXL_ARCH" --intensity 1.0 --levers "$FAMILY_LEVERS" \
  "${INTENSITY1_ARGS[@]}" --row-timeout 240
# Every mode of the zimage family at 1000x600 without a cap (subject through FLUX.2 klein).
phase zimage-modes 60 "$PY" bench/modes.py --model "$ZIMAGE_DIR" --device "$DEVICE" "${MODES_ARGS[@]}" \
  --json "$OUT/zimage-modes.json"
phase modes 45 "$PY" bench/modes.py --model "$SD15_DIR" --model "$SDXL_DIR" --device "$DEVICE" "${MODES_ARGS[@]}" \
  --json "$OUT/modes.json"
phase families 90 "${BENCH[@]}" --arch "$FAST_ARCH" --no-flops --levers "$FAMILY_LEVERS" --row-timeout 200
phase families 60 "${BENCH[@]}" --arch "$SD15_ARCH" --no-flops --levers "$FAMILY_LEVERS" --row-timeout 200
echo "== done in $((SECONDS - started))s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
