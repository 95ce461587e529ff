#!/usr/bin/env bash
# The GPU measurements in one unattended run: environment check, then benchmarks/gpu_suite.py (rows in priority
# order, each with its own time limit, inside one budget). Everything goes to $OUT: gpu_suite.md (the tables),
# gpu_suite.json (raw results and command lines), gpu_suite.log (this script's output), profile.xplane.pb.
# gpu_suite.md is rewritten after every row, so a run killed from outside still leaves every finished row.
#
#   bash benchmarks/gpu_suite.sh                       # on the GPU machine ($OUT: the folder that comes back)
#   GPU_SUITE_DRY_RUN=1 bash benchmarks/gpu_suite.sh   # on a CPU: tiny sizes, 60 s budget, proves the plumbing
#
# Environment: OUT (default /tmp/gpu_suite_out), GPU_SUITE_BUDGET_S (default 450; dry run 60), UGATIT_OFFICIAL_DIR
# (default .official/ugatit), PYTHON (default python3), GPU_SUITE_TIMEOUT_SCALE (multiplies every row's limit;
# default 1), GPU_SUITE_DRY_CACHE (dry run: a persistent XLA cache folder).
# Python packages the GPU image lacks are installed from wheels in .whl/ (benchmarks/gpu_prepare.sh makes them).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_suite_out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DRY=${GPU_SUITE_DRY_RUN:-0}
if [ "$DRY" = 1 ]; then BUDGET=${GPU_SUITE_BUDGET_S:-60}; else BUDGET=${GPU_SUITE_BUDGET_S:-450}; fi
exec > >(tee -a "$OUT/gpu_suite.log") 2>&1
echo "[gpu_suite.sh] $(date -u '+%F %T') UTC; budget ${BUDGET}s; dry run: $DRY; python: $(command -v "$PY")"

if [ "$DRY" = 1 ]; then
    export JAX_PLATFORMS=cpu
else
    nvidia-smi || echo "[gpu_suite.sh] nvidia-smi failed"
fi

# Packages the project imports that the GPU image may lack, and flax.nnx, which a flax older than its jax cannot
# import (jax 0.11 renamed jax.experimental.hijax.HiPrimitive to HiPrim). Each missing one is installed from a
# wheel in .whl/ when one is there; none is downloaded (the GPU machine reaches no registry).
missing=$("$PY" - <<'EOF'
import importlib
for dist, module in (("ml_collections", "ml_collections"), ("grain", "grain"), ("array_record", "array_record"),
                     ("portpicker", "portpicker"), ("flax", "flax.nnx")):
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001
        print(dist, f"({type(e).__name__}: {str(e)[:200]})".replace(" ", "_"))
EOF
)
installed=""
if [ -n "$missing" ]; then
    echo "[gpu_suite.sh] missing or broken here:"; echo "$missing"
    wheels=()
    while read -r dist why; do
        [ -z "$dist" ] && continue
        found=$(ls .whl/"$dist"-*.whl 2>/dev/null | head -1)
        if [ -n "$found" ]; then wheels+=("$found"); else echo "[gpu_suite.sh] no wheel for $dist in .whl/ $why"; fi
    done <<< "$missing"
    if [ ${#wheels[@]} -gt 0 ]; then
        SITE=/tmp/gpu_suite_site
        if PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "${wheels[@]}"; then
            export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
            installed=$(printf '%s ' "${wheels[@]##*/}")
            echo "[gpu_suite.sh] installed into $SITE: $installed"
        else
            echo "[gpu_suite.sh] pip could not install ${wheels[*]}"
        fi
    fi
    still=$("$PY" -c "
import importlib
for m in ('ml_collections', 'grain', 'flax.nnx'):
    try: importlib.import_module(m)
    except Exception as e: print(f'{m}: {type(e).__name__}: {e}'[:300])
")
    [ -n "$still" ] && echo "[gpu_suite.sh] still failing (reported in gpu_suite.md): $still"
fi
if [ -z "$missing" ]; then GPU_SUITE_WHEELS="none needed"
else GPU_SUITE_WHEELS="installed: ${installed:-none}; missing here: $(echo "$missing" | cut -d' ' -f1 | tr '\n' ' ')"; fi
export GPU_SUITE_WHEELS

args=(--out "$OUT" --budget "$BUDGET" --timeout-scale "${GPU_SUITE_TIMEOUT_SCALE:-1}")
if [ "$DRY" = 1 ]; then args+=(--dry-run --dry-cache "${GPU_SUITE_DRY_CACHE:-$HOME/.cache/ugatit_jax/gpu-suite-dry}"); fi
# The suite keeps to its budget by itself; this outer limit only catches a hang (it is stopped with SIGTERM, and
# writes what it has).
timeout -s TERM -k 20 $((${BUDGET%.*} + 60)) "$PY" benchmarks/gpu_suite.py "${args[@]}"
rc=$?
echo "[gpu_suite.sh] done (exit $rc) at $(date -u '+%T') UTC; results in $OUT/gpu_suite.md"
exit $rc
