#!/usr/bin/env bash
# Every row of docs/performance.md's results table, one process per row (peak memory is per process).
#   bash benchmarks/suite.sh                 # all rows
#   bash benchmarks/suite.sh dit_xl          # only the rows whose command contains "dit_xl"
# Output: the two lines each benchmark prints, after the command that produced them.
set -u
cd "$(dirname "$0")/.."
ROWS=(
  # issue 8's acceptance figures first, so that a short GPU lease gets them: B/2 and XL/2 train, guided, XL/2 memory
  "throughput --model=dit_b  --batch=256"
  "throughput --model=dit_xl --batch=256 --remat --remat_policy=dots"
  "throughput --model=dit_b  --batch=256 --mode=guided"
  "throughput --model=dit_xl --batch=256 --mode=guided"
  "throughput --model=dit_xl --batch=256"
  "throughput --model=dit_xl --batch=128"
  "throughput --model=dit_xl --batch=256 --remat"
  "throughput --model=dit_xl --batch=256 --grad_accum=2"
  "throughput --model=dit_s  --batch=256"
  "throughput --model=dit_l  --batch=256"
  "throughput --model=unet   --batch=128"
  "throughput --model=dit_b  --batch=256 --steps_per_call=4"
  "throughput --model=sit_xl_repa     --batch=256"
  "throughput --model=lightningdit_xl --batch=256"
  "throughput --model=sit_xl_repa     --batch=256 --remat --remat_policy=dots"
  "throughput --model=lightningdit_xl --batch=256 --mode=guided"
  "throughput --model=dit_s  --batch=256 --mode=guided"
  "throughput --model=dit_l  --batch=256 --mode=guided"
  "throughput --model=unet   --batch=128 --mode=guided"
  "input_pipeline --train_img_per_s=3000"
  "pixel_pipeline --workers=1,4,8,16"
  "fid_features --batch_size=250 --num_images=2000 --image_size=256"
)
for row in "${ROWS[@]}"; do
  if [ $# -gt 0 ] && [[ "$row" != *"$1"* ]]; then continue; fi
  echo "\$ python -m benchmarks.$row"
  python -m benchmarks.$row 2>&1 | grep -E '^(device=|img/s=|source=|host batches|FID Inception|wrote|[0-9]+ synthetic|[|]|Traceback|.*Error)|attention_impl=cudnn is not' \
    || echo "(failed: rerun the command above to see why)"
done
