#!/bin/bash
# R1 (MSE), R1 (cosine) and plain KL from one teacher, Fashion-MNIST 6000 images, 2 student epochs, seed 0
# (docs/RESULTS.md, "R1's gradient term"). From the repository root: bench/trials/r1_cosine_small.sh [OUT]
set -ex
KD=${KD:-build/src/cli/kd-train}
O=${1:-runs/r1cos}
COMMON="--threads 1 --set data.limit=6000 --set teacher.epochs=2 --set stages.0.epochs=2 --tensorboard none"
$KD teacher $COMMON --out $O/teacher
for v in mse cosine; do
  $KD distill --config configs/r1_gradient.json $COMMON --set teacher.path=$O/teacher/teacher.pt \
     --set stages.0.losses.0.distance=$v --out $O/r1_$v > $O/r1_$v.log 2>&1
done
$KD distill --config configs/r1_gradient.json $COMMON --set teacher.path=$O/teacher/teacher.pt \
   --set 'stages.0.losses.0={"type": "temperature_kl", "name": "kl", "weight": 0.8, "temperature": 3.0}' --out $O/kl > $O/kl.log 2>&1
