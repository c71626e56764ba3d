#!/usr/bin/env bash
# GPU evidence in one run: the GPU tests, then the CPU-vs-GPU throughput table at the batch sizes
# of the README's targets, printed at the end.
#
#   scripts/gpu_check.sh              on a machine with a CUDA device
#   scripts/gpu_check.sh --rehearse   the same steps on the CPU with small batches, to check the
#                                     script and the environment before spending GPU time
#
# Installs nothing into the environment and needs no network: the project itself is built into a
# temporary folder, and every dependency must already be importable by $PY (default python3; a
# PyTorch of another version than the pinned one is accepted and reported). A missing one is named
# before anything runs. Results go to $OUT (default: a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
case "${1:-}" in
  "") rehearse=false ;;
  --rehearse) rehearse=true ;;
  *) echo "gpu_check: unknown option '$1' (valid: --rehearse)" >&2; exit 2 ;;
esac
out=${OUT:-$(mktemp -d)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export BENCH_CACHE_DIR=${BENCH_CACHE_DIR:-$out/cache}

# Built from a copy, so that no build files land in the checkout and none from earlier builds
# land in the package.
mkdir "$tmp/src"
cp -r pyproject.toml README.md bench bench_codecs "$tmp/src/"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-index --no-build-isolation \
    --target "$tmp/site" "$tmp/src"
export PYTHONPATH="$tmp/site${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - "$rehearse" <<'EOF'
import re, sys
from importlib import metadata

# The runtime and the test extra, but Ray (the GPU tests do not use it) and numba (without it
# the `ar` codecs run their tensors on the CPU too: the same bytes, slower, and their rows'
# library column says so).
needed = [r for r in metadata.requires("aecodec-bench")
          if ("extra" not in r or 'extra == "test"' in r) and not r.startswith(("ray", "numba"))]
found, missing = [], []
for req in needed:
    name = re.match(r"[A-Za-z0-9_.-]+", req).group()
    try:
        found.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit(f"gpu_check: missing packages: {', '.join(missing)}. Install them into {sys.executable} "
             "or put them on PYTHONPATH; nothing was run.")
print("python", sys.version.split()[0], "|", ", ".join(found))

import torch
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "| CUDA", torch.version.cuda)
elif sys.argv[1] == "true":
    print("rehearsal on the CPU: no CUDA device, the GPU tests skip")
else:
    sys.exit("gpu_check: PyTorch sees no CUDA device (use --rehearse to check the script on the CPU)")
EOF

if $rehearse; then
  devices=cpu big=8192 small=1024 rounds=3
else
  devices=cpu,cuda big=131072 small=1024 rounds=5
fi

# A failure below is reported at the end rather than stopping the script: every number that can
# still be measured is worth the GPU time already spent.
failed=()
"$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_nvjpeg.py \
    "tests/test_ar.py::test_cuda_gives_the_cpus_bytes_and_images" || failed+=("GPU tests")

bench_run() { "$PY" -m bench run --dataset mnist-5k --sweep none --no-tsne --overwrite "$@"; }
# AE and JPEG on the same GPU with the CPU beside them, at the target batch of 131,072.
if ! bench_run --codecs ae95,jpeg,nvjpeg --device "$devices" --batch "$big" --rounds "$rounds" --out "$out/gpu-run"; then
  failed+=("run with nvjpeg")
  bench_run --codecs ae95,jpeg --device "$devices" --batch "$big" --rounds "$rounds" --out "$out/gpu-run" \
    || failed+=("run without nvjpeg")
fi
# The CPU target's batch: 1,024.
bench_run --codecs ae95 --device cpu --batch "$small" --rounds "$((rounds * 2))" --out "$out/cpu-run" \
  || failed+=("CPU run")

# The entropy-coded learned codecs (network on the device, entropy coder on the CPU) at 1,024:
# one training epoch, since speed does not depend on how well the weights are trained.
bench_run --codecs factorized:epochs=1,ar:epochs=1 --device "$devices" --batch "$small" \
    --rounds "$rounds" --out "$out/learned-run" || failed+=("learned-codec run")

for run in gpu-run cpu-run learned-run; do
  [ -f "$out/$run/report.md" ] || continue
  echo "== $run (full report: $out/$run/report.md)"
  sed -n '/^## Throughput/,/^## Samples/p' "$out/$run/report.md" | grep '^|'
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: FAILED: ${failed[*]}" >&2
  exit 1
fi
