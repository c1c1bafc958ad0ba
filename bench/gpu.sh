#!/usr/bin/env bash
# The GPU checks quoted in bench/README.md, as one script for a single lent GPU machine
# (Python 3.12 + torch + timm there; zarr and its needs travel as wheels in .whl/).
#   bash bench/gpu.sh OUTDIR                      # strategies, then extraction
#   PARTS=strategies bash bench/gpu.sh OUTDIR     # one part only
set -uo pipefail
out=${1:-bench-gpu}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import sys, torch, timm; print(sys.version, torch.__version__, timm.__version__)" \
  | tee -a "$out/gpu.txt"

parts=${PARTS:-strategies extract}

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

# Extraction: DINOv2 ViT-g/14 (random init, same FLOPs) model-only vs end to end from JPEGs,
# then ViT-S/14 end to end with CPU and with GPU JPEG decoding.
[[ $parts == *extract* ]] || exit 0
timeout "${EXTRACT_SECONDS:-110}" python3 bench/extract.py --model dinov2_vitg14 --random-init \
  --device cuda --jpegs 3000 --batch-size 128 --workers 14 --json "$out/extract_vitg14.json" \
  2>&1 | tee "$out/extract_vitg14.md"
timeout "${EXTRACT_SECONDS:-110}" python3 bench/extract.py --model dinov2_vits14 --random-init \
  --device cuda --jpegs 6000 --batch-size 512 --workers 14 --gpu-decode \
  --json "$out/extract_vits14.json" 2>&1 | tee "$out/extract_vits14.md"
