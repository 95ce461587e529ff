#!/usr/bin/env bash
# Run here (not on the GPU machine) before lending the repository to a GPU: puts what gpu_suite.sh needs that is
# never committed into two git-ignored folders that the device tool carries.
#   .official/ugatit  the official PyTorch U-GAT-IT code, from a checkout or a bare git directory you name
#   .whl/             wheels of the packages the GPU image lacks (ml_collections, grain and its array_record and
#                     portpicker) and a flax that imports flax.nnx with the image's jax 0.11 (used only if the
#                     image's own flax cannot)
#
#   bash benchmarks/gpu_prepare.sh /path/to/UGATIT-pytorch        # a checkout, or a bare git dir
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-${UGATIT_OFFICIAL_DIR:-}}
mkdir -p .git/info
for d in /.official/ /.whl/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done

if [ -n "$src" ]; then
    rm -rf .official/ugatit && mkdir -p .official/ugatit
    if [ -f "$src/networks.py" ]; then
        cp -r "$src"/. .official/ugatit/ && rm -rf .official/ugatit/.git
    elif git --git-dir="$src" rev-parse --git-dir >/dev/null 2>&1; then
        git --git-dir="$src" archive HEAD | tar -x -C .official/ugatit
    elif git --git-dir="$src/.git" rev-parse --git-dir >/dev/null 2>&1; then
        git --git-dir="$src/.git" archive HEAD | tar -x -C .official/ugatit
    else
        echo "$src: neither a checkout with networks.py nor a git directory" >&2; exit 1
    fi
    test -f .official/ugatit/networks.py
    echo "official code: .official/ugatit ($(du -sh .official/ugatit | cut -f1))"
else
    echo "no official code named: the GPU suite will run without the PyTorch comparison" >&2
fi

# Python 3.12 x86-64 wheels (the GPU image's python3), pure Python or manylinux.
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
mkdir -p .whl
for spec in ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 flax==0.12.12; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$spec"
done
ls -la .whl
echo "device tool: run bash benchmarks/gpu_suite.sh with carry [\".official\", \".whl\"] (see benchmarks/README.md)"
