#!/bin/bash
# The paper's experiments at full strength on one GPU (issue: "The paper's experiments at full
# strength"), sized so that each part fits one 10-minute device call. Run on the device
# machine after `sh bench/gpu_tests.sh` here, with .gpu carried and Fashion-MNIST copied into
# .gpu/fmnist:
#
#   bash bench/gpu_experiments.sh PART OUTDIR
#
# PART: ablation-resnet20 | pretrain | depth | depth-resnet34 | lowering | lowering-resnet18 | stream
# Results land in OUTDIR/<experiment>/ (summary.csv, runs.csv, curves.csv, SVGs, per-run
# metrics.json); pack them without checkpoints for the trip back:
#   tar czf $OUT/PART.tgz --exclude='*.safetensors' -C OUTDIR .
# Every experiment resumes run by run, so a part cut off by the call's limit continues where
# it stopped when called again on the same (still warm) machine.
set -euo pipefail
part=${1:?part}
out=${2:?output folder}
T=.gpu/tern
D="--data-path .gpu/fmnist --device cuda"
full="--epochs 15 --seeds 5 --train-limit 60000 --hflip"
case "$part" in
  ablation-resnet20)  # Fig. 3 on ResNet-20 (the vgg-small one took 206 s with --jobs 4)
    $T experiment ablation $D --model resnet20 --width 0 $full --jobs 10 --out "$out" --quiet ;;
  pretrain)           # Fig. 4: ternary ResNet-32 from scratch / PI, constant / plateau LR
    $T experiment pretrain $D --model resnet32 --width 0 --small-model resnet20 $full --jobs 10 --out "$out" --quiet ;;
  depth)              # ternary ResNet-32 vs FP ResNet-20, all with the cosine schedule
    $T experiment depth $D --small-model resnet20 --deep-model resnet32 $full --jobs 10 --out "$out" --quiet ;;
  depth-resnet34)     # the paper's own pair: ternary ResNet-34 vs FP ResNet-18 (small-image stem)
    $T experiment depth $D --small-model resnet18 --deep-model resnet34 --small-input $full --jobs 10 --out "$out" --quiet ;;
  lowering)           # §4.2: FP ResNet-20, lowered, fine-tuned 5 epochs
    $T experiment lowering $D --model resnet20 --width 0 $full --finetune-epochs 5 --jobs 10 --out "$out" --quiet ;;
  lowering-resnet18)  # §4.2 on the net: FP ResNet-18 (small-image stem), lowered, fine-tuned
    $T experiment lowering $D --model resnet18 --small-input --width 0 $full --finetune-epochs 5 --jobs 10 --out "$out" --quiet ;;
  stream)             # streamed JPEG folder feeding ternary ResNet-34 at 224 (loader vs GPU)
    python3 bench/make_jpeg_folder.py /tmp/jf 4096 100
    $T bench load --data folder --data-path /tmp/jf --image-size 224 --batch 256 --batches 14 --stream
    $T train --device cuda --data folder --data-path /tmp/jf --image-size 224 --stream --model resnet34 \
      --ternary --fp-first-layer --epochs 3 --batch 256 --out "$out/stream"
    # the same in bf16: the step alone outruns the loader there
    $T train --device cuda --precision bf16 --data folder --data-path /tmp/jf --image-size 224 --stream \
      --model resnet34 --ternary --fp-first-layer --epochs 2 --batch 256 --out "$out/stream-bf16" ;;
  *) echo "unknown part: $part" >&2; exit 2 ;;
esac
