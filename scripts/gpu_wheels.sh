#!/usr/bin/env bash
# Wheels for a GPU machine that has PyTorch but not the rest of this project's dependencies, and
# no network (e.g. an image with Python 3.12): downloaded here, for that Python, into .whl/ (git
# ignores it), at the versions this checkout's .venv runs.
#
#   scripts/gpu_wheels.sh                 (TARGET_PY=3.12 by default)
#   then, on the GPU machine, from the repository root with .whl/ carried along:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#     PYTHONPATH=/tmp/site scripts/gpu_check.sh
#
# The list is what scripts/gpu_check.sh found missing there: every other dependency (numpy,
# scipy, pandas, scikit-image, scikit-learn, threadpoolctl, matplotlib, tabulate, tqdm, joblib,
# pytest, pytest-benchmark, hypothesis) is in that image. numba is left out: its compiler,
# llvmlite, is a 60 MB wheel, more than a device run carries beside the others, and without it
# the `ar` codecs run their tensors on the CPU (scripts/gpu_check.sh says so).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TARGET_PY=${TARGET_PY:-3.12}
packages=(imagecodecs mlxtend platformdirs constriction bjontegaard zstandard)
pins=$("$PY" -c 'import sys; from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in sys.argv[1:]))' "${packages[@]}")
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
rm -rf .whl
# shellcheck disable=SC2086  # pins is a list of words
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$TARGET_PY" --implementation cp "${platforms[@]}" -d .whl $pins
ls -l .whl
