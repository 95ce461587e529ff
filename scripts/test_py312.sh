#!/usr/bin/env bash
# Runs the README's test command under Python 3.12 (jax 0.12 + flax 0.12.12 resolve there; the usual .venv on 3.11
# gets jax 0.10 + flax 0.12.8), so the suite can be checked on both dependency lines.
#
#   scripts/test_py312.sh VENV_DIR [pytest arguments...]
#
# VENV_DIR is created if missing (reused otherwise). PYTHON names the interpreter (default: python3.12, via pyenv
# if it is installed: PYENV_VERSION=3.12.1). The pytest arguments default to the README's `-q -n 2 tests`; e.g.
#   scripts/test_py312.sh /tmp/venv312 -q -x -p no:xdist tests/test_norms.py tests/test_parity_forward.py
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
  echo "usage: $0 VENV_DIR [pytest arguments...]" >&2
  exit 2
fi
venv=$1
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3.12}
if [[ -z ${PYTHON:-} ]] && command -v pyenv >/dev/null && [[ -z ${PYENV_VERSION:-} ]]; then
  export PYENV_VERSION=3.12.1
fi

if [[ ! -x $venv/bin/python ]]; then
  "$python" -m venv "$venv"
fi
version=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ $version != 3.12 ]]; then
  echo "error: $venv runs Python $version, not 3.12; remove it or point PYTHON at a 3.12 interpreter" >&2
  exit 2
fi

# shellcheck disable=SC1091
. "$venv/bin/activate"
cd "$repo"
# The README's test command, in this venv.
pip install -q -U pip
pip install -q torch==2.13.0 -e '.[torch,test,onnx]'
python -c 'import sys, jax, flax, flax.nnx; print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__)'
if [[ $# -eq 0 ]]; then
  set -- -q -n 2 tests
fi
exec pytest "$@"
