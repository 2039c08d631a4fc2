#!/usr/bin/env bash
# One bounded check of simsearch on a GPU machine (the lent H200: 16 cores, its own python3 with torch+CUDA, no
# network), in at most 8 minutes; on a machine without a GPU it says so, skips the GPU parts and still measures.
#
#   bash benchmarks/gpu_check.sh            # the full check (2,000 photos, 1M faiss vectors): about 3 to 5 minutes
#   bash benchmarks/gpu_check.sh --quick    # 200 photos, 100k vectors: a minute or two, for a CPU machine
#   options: --budget SECONDS (default 450, the whole run's bound), --photos N, --python PY (default python3)
#
# Steps, each bounded with `timeout` and cut short to what is left of the budget:
#   1. nvidia-smi, python, torch, CUDA and package versions; the wheels in .whl/ (benchmarks/gpu_wheels.sh puts
#      there what the machine lacks) installed into a scratch folder on PYTHONPATH, when they are for this python
#   2. tests/test_gpu.py (skipped with its reason where torch sees no GPU)
#   3. N photo-like JPEGs of ImageNet size made from demo/photos (benchmarks/gpu_photos.py, all cores)
#   4. `simsearch index` on them, timed from process start to exit: default workers, every core but one, a bigger
#      batch, and a 64-photo run for the start-up; decoding alone and the model alone, to show which stage limits
#   5. faiss flat search (and k-means where faiss has a GPU) on 1M x 128 random vectors, CPU against GPU
#   6. a table, and everything as JSON in $OUT/gpu_check.json (when OUT is set), with this log and pytest's
# Exit status: 1 if a test failed, else 2 if a step failed or ran out of time, else 0.
# On the device machine: run with timeout_s 600 and carry [".whl"]:  bash benchmarks/gpu_check.sh

set -u -o pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2

QUICK=0
BUDGET=450
PHOTOS=""
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --budget) BUDGET=$2; shift ;;
        --photos) PHOTOS=$2; shift ;;
        --python) PY=$2; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$PHOTOS" ] || { [ $QUICK = 1 ] && PHOTOS=200 || PHOTOS=2000; }

WORK=${GPU_CHECK_WORK:-/tmp/simsearch-gpu-check}
PARTS=$WORK/parts
rm -rf "$WORK" && mkdir -p "$PARTS" || exit 2
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    exec > >(tee "$OUT/gpu_check.log") 2>&1
    TEE_PID=$!
    trap 'exec >&- 2>&-; wait "$TEE_PID" 2>/dev/null' EXIT   # the log is whole before the command returns
fi
export PYTHONUNBUFFERED=1
START_US=${EPOCHREALTIME/./}
DEADLINE=$(( $(date +%s) + BUDGET ))
RESERVE=20   # kept for the report
printf '{"started": "%s", "quick": %s, "budget_seconds": %d, "photos": %d, "host": "%s"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$([ $QUICK = 1 ] && echo true || echo false)" "$BUDGET" "$PHOTOS" \
    "$(uname -n)" >"$PARTS/run.jsonl"

now_us() { echo "${EPOCHREALTIME/./}"; }

# step NAME LIMIT COMMAND...: run COMMAND under `timeout`, for at most LIMIT seconds or what the budget leaves
step() {
    local name=$1 limit=$2 left started rc
    shift 2
    left=$(( DEADLINE - $(date +%s) - RESERVE ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 5 ]; then
        echo "== $name: skipped, no time left in the budget of $BUDGET s ($RESERVE s are kept for the report)"
        printf '%s\t-1\t0\t0\n' "$name" >>"$PARTS/steps.tsv"
        return 1
    fi
    echo "== $name (at most $limit s)"
    started=$(now_us)
    timeout -k 5 "$limit" "$@"
    rc=$?
    printf '%s\t%d\t%s\t%d\n' "$name" "$rc" "$(( ($(now_us) - started) / 100000 ))e-1" "$limit" >>"$PARTS/steps.tsv"
    case $rc in
        0) ;;
        124|137) echo "== $name: timed out after $limit s" ;;
        *) echo "== $name: failed (exit $rc)" ;;
    esac
    return "$rc"
}

# --- 1. the machine ------------------------------------------------------------------------------------------------
echo "== machine: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo) memory," \
    "/dev/shm $(df -h --output=size /dev/shm 2>/dev/null | tail -1 | tr -d ' '), /tmp free $(df -h --output=avail /tmp | tail -1 | tr -d ' ')"
if command -v nvidia-smi >/dev/null; then
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
    timeout 30 nvidia-smi | head -20
else
    echo "nvidia-smi: not found (no NVIDIA driver here): the GPU parts will be skipped"
fi
echo "python: $(command -v "$PY") ($("$PY" --version 2>&1))"
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
SITE=$WORK/site
if compgen -G ".whl/*.whl" >/dev/null; then
    WANT=$(cat .whl/PYTHON 2>/dev/null || echo "$PYVER")
    if [ "$WANT" = "$PYVER" ]; then
        step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" .whl/*.whl && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "== wheels: .whl/ holds wheels for Python $WANT, this is $PYVER: not installed, using what is here"
    fi
else
    echo "== wheels: no .whl/ folder: using the packages this python has"
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$REPO
step env 90 "$PY" benchmarks/gpu_bench.py env "$PARTS"
GPU=$(timeout 60 "$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
CORES=$(nproc)
[ "$GPU" = 1 ] && echo "== a CUDA GPU is visible to torch" || echo "== no CUDA GPU visible to torch: GPU tests and GPU timings are skipped, the CPU is measured"

# --- 2. the GPU tests ----------------------------------------------------------------------------------------------
step tests 240 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$WORK/pytest.log"
TEST_RC=$(awk -F'\t' '$1 == "tests" {print $2}' "$PARTS/steps.tsv")
TEST_RC=${TEST_RC:-1}
"$PY" - "$WORK/pytest.log" "$TEST_RC" "$PARTS" <<'EOF'
import json, re, sys
from pathlib import Path
log, rc = Path(sys.argv[1]).read_text(errors="replace"), int(sys.argv[2])
lines = [l for l in log.splitlines() if re.search(r"\b(passed|failed|skipped|error)", l) and " in " in l]
detail = lines[-1].strip("= ") if lines else "no pytest summary"
skips = sorted({m.group(1) for m in re.finditer(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", log)})
result = ("passed" if rc == 0 and "passed" in detail else "all skipped" if rc == 0
          else "timed out" if rc in (124, 137) else "skipped (no time)" if rc == -1 else f"failed (exit {rc})")
with open(Path(sys.argv[3]) / "tests.jsonl", "a") as f:
    f.write(json.dumps({"result": result, "exit_code": rc, "detail": detail + ("; " + "; ".join(skips) if skips else "")}) + "\n")
EOF

# --- 3. photos -----------------------------------------------------------------------------------------------------
SMALL=64
[ $QUICK = 1 ] && SMALL=32
if step photos 120 "$PY" benchmarks/gpu_photos.py "$WORK/photos" --count "$PHOTOS"; then
    mkdir -p "$WORK/photos-small"
    for f in $(ls "$WORK/photos" | head -n "$SMALL"); do ln "$WORK/photos/$f" "$WORK/photos-small/$f"; done
    printf '{"photos": %d, "bytes": %d, "small": %d}\n' "$PHOTOS" "$(du -sb "$WORK/photos" | cut -f1)" "$SMALL" \
        >>"$PARTS/photos.jsonl"

    # --- 4. indexing: the whole run, then each stage alone -----------------------------------------------------
    # decode workers: the indexer's default (with a GPU every core but one, at most 8; on a CPU half the cores),
    # and every core but the one that feeds the GPU
    if [ "$GPU" = 1 ]; then DEFAULT_W=$(( CORES - 1 )); else DEFAULT_W=$(( CORES / 2 )); fi
    DEFAULT_W=$(( DEFAULT_W > 8 ? 8 : DEFAULT_W < 1 ? 1 : DEFAULT_W ))
    ALL=$(( CORES > 1 ? CORES - 1 : 1 ))
    [ "$ALL" = "$DEFAULT_W" ] && echo "== every core but one is the default here ($ALL workers): no all-cores runs"
    step index-startup 60 "$PY" benchmarks/gpu_bench.py index "$PARTS" "$WORK/photos-small" --label startup
    step index-default 90 "$PY" benchmarks/gpu_bench.py index "$PARTS" "$WORK/photos" --label default
    if [ $QUICK = 0 ] && [ "$ALL" != "$DEFAULT_W" ]; then
        step index-all-cores 90 "$PY" benchmarks/gpu_bench.py index "$PARTS" "$WORK/photos" \
            --label "all-cores" --workers "$ALL"
    fi
    step decode-default 60 "$PY" benchmarks/gpu_bench.py decode "$PARTS" "$WORK/photos" --workers "$DEFAULT_W"
    if [ $QUICK = 0 ] && [ "$ALL" != "$DEFAULT_W" ]; then
        step decode-all-cores 60 "$PY" benchmarks/gpu_bench.py decode "$PARTS" "$WORK/photos" --workers "$ALL"
    fi
    if [ "$GPU" = 1 ]; then
        step model 120 "$PY" benchmarks/gpu_bench.py model "$PARTS" "$WORK/photos" --batch-size 32 128 256 --images 4096
    else
        step model 90 "$PY" benchmarks/gpu_bench.py model "$PARTS" "$WORK/photos" --batch-size 32 \
            --images $(( QUICK ? 96 : 320 ))
    fi
fi

# --- 5. faiss ------------------------------------------------------------------------------------------------------
if [ $QUICK = 1 ]; then
    step faiss 90 "$PY" benchmarks/gpu_bench.py faiss "$PARTS" --vectors 100000 --queries 1000
else
    step faiss 150 "$PY" benchmarks/gpu_bench.py faiss "$PARTS" --vectors 1000000 --queries 10000
fi
if [ $QUICK = 0 ] && [ -d "$WORK/photos-small" ]; then
    step index-batch-128 90 "$PY" benchmarks/gpu_bench.py index "$PARTS" "$WORK/photos" \
        --label "all-cores-batch-128" --workers "$ALL" --batch-size 128
fi

# --- 6. the report -------------------------------------------------------------------------------------------------
echo "== report (the whole check took $(( ($(now_us) - START_US) / 1000000 )) s)"
timeout 30 "$PY" benchmarks/gpu_bench.py report "$PARTS" ${OUT:+--json "$OUT/gpu_check.json"}
[ -n "${OUT:-}" ] && cp "$WORK/pytest.log" "$OUT/gpu_check_pytest.log" 2>/dev/null

if [ "$TEST_RC" != 0 ]; then
    echo "== the GPU tests did not pass (pytest exit $TEST_RC; -1: not run, 124: timed out): see pytest's output above"
    exit 1
fi
if awk -F'\t' '$2 != 0 {bad = 1} END {exit !bad}' "$PARTS/steps.tsv"; then
    echo "== a step failed or ran out of time (see the table)"
    exit 2
fi
exit 0
