#!/usr/bin/env bash
# GPU evidence in one run: the GPU tests, then the CPU-vs-GPU throughput table at the batch
# sizes of the README's targets. Installs nothing: run it where the project is installed
# (`make test` builds .venv) on a machine with a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
out=${OUT:-$(mktemp -d)}
export BENCH_CACHE_DIR=${BENCH_CACHE_DIR:-$out/cache}

"$PY" -c 'import torch, sys
if not torch.cuda.is_available(): sys.exit("gpu_check: PyTorch sees no CUDA device")
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'

"$PY" -m pytest -q -m gpu tests -p no:cacheprovider

# AE and JPEG on the same GPU, and the CPU beside them; batch 131,072 as in the target.
"$PY" -m bench run --dataset mnist-5k --codecs ae95,jpeg,nvjpeg --device cpu,cuda \
    --batch 131072 --rounds 5 --sweep none --no-tsne --out "$out/gpu-run" --overwrite
# CPU target batch: 1,024.
"$PY" -m bench run --dataset mnist-5k --codecs ae95 --device cpu --batch 1024 --rounds 10 \
    --sweep none --no-tsne --out "$out/cpu-run" --overwrite
for run in gpu-run cpu-run; do
  echo "== $run"
  sed -n '/^## Throughput/,/^## Samples/p' "$out/$run/report.md" | grep '^|'
done
