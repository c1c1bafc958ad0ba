#!/usr/bin/env bash
# The GPU checks quoted in bench/README.md, as one script for a single lent GPU machine
# (Python 3.12 + torch + timm there; zarr and its needs travel as wheels in .whl/).
#   bash bench/gpu.sh OUTDIR                              # extraction, about 7 minutes
#   PARTS=strategies bash bench/gpu.sh OUTDIR             # the strategy checks instead
#   PARTS="extract strategies" bash bench/gpu.sh OUTDIR   # both (more than one lease)
set -uo pipefail
out=${1:-bench-gpu}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import sys, torch, torchvision, timm; print(sys.version, torch.__version__, torchvision.__version__, timm.__version__)" \
  | tee -a "$out/gpu.txt"

parts=${PARTS:-extract}

# Extraction (issue 14): DINOv2 ViT-g/14 and ViT-S/14 (random init, same FLOPs) at 224 px on
# 20,000 JPEG files (ViT-S: hard-linked to 60,000, so its short run is not all start-up):
# model-only vs end to end with PIL decoding in the workers, with GPU decoding, and compiled;
# images/s, fraction of model-only, GPU utilisation, peak GPU memory; then the device path's
# pixels against the per-image PIL transform and the two decodings' features.
if [[ $parts == *extract* ]]; then
workers=$(( $(nproc) - 1 ))
timeout "${VITG_SECONDS:-280}" python3 bench/extract.py --model dinov2_vitg14 --random-init \
  --device cuda --jpegs 20000 --batch-size 128 --workers "$workers" \
  --runs model,cpu,gpu,compiled --json "$out/extract_vitg14.json" 2>&1 \
  | tee "$out/extract_vitg14.md"
timeout "${VITS_SECONDS:-150}" python3 bench/extract.py --model dinov2_vits14 --random-init \
  --device cuda --jpegs 20000 --copies 3 --batch-size 512 --workers "$workers" \
  --runs model,cpu,gpu,compiled --check-transform --json "$out/extract_vits14.json" 2>&1 \
  | tee "$out/extract_vits14.md"
fi

# Strategies: N = 1M, D = 1536, C = 1000, B = 1000; ProbCover (its graph reported apart) alone.
if [[ $parts == *strategies* ]]; then
all=$(python3 -c "from alfm.strategies import list_strategies as l; print(','.join(s for s in l() if s != 'probcover'))")
for names in "$all" probcover; do
  limit=${STRATEGY_SECONDS:-200}
  [[ $names == probcover ]] && limit=${PROBCOVER_SECONDS:-300}
  timeout "$limit" python3 bench/strategies.py --device cuda --sizes 1000000 \
    --dim 1536 --classes 1000 --budget 1000 --no-skactiveml --strategies "$names" \
    --json "$out/strategies_${names%%,*}.json" 2>&1 | tee "$out/strategies_${names%%,*}.md"
done
fi
