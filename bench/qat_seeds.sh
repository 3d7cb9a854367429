#!/bin/bash
# QAT + int8 on Fashion-MNIST over 3 seeds (issue 5's measurement): configs/qat.json distils the
# depthwise student in float (3 stages), runs a QAT stage, writes OUT/student.int8.pt and scores it.
# All seeds share one teacher, so the seeds vary only the student's initialisation and data order.
#
#   bench/qat_seeds.sh [TEACHER.pt] [KD_TRAIN]
#     TEACHER.pt  a teacher from `kd-train teacher` or a default run (default: runs/default/teacher.pt;
#                 if missing, each seed trains its own with the config's teacher settings)
#     KD_TRAIN    the kd-train binary (default: build/src/cli/kd-train)
# Writes runs/qat_seed{0,1,2}/ and runs/qat_seed{0,1,2}.log, then prints the table of bench/qat_summary.py.
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=${1:-runs/default/teacher.pt}
kd_train=${2:-build/src/cli/kd-train}
for s in 0 1 2; do
  out=runs/qat_seed$s
  mkdir -p "$out"
  if [ -f "$teacher" ]; then cp "$teacher" "$out/teacher.pt"; fi
  /usr/bin/time -f "wall %e s" "$kd_train" distill --config configs/qat.json --out "$out" --seed $s --threads 2 \
    > "$out.log" 2>&1
done
/usr/bin/python3 bench/qat_summary.py runs/qat_seed0 runs/qat_seed1 runs/qat_seed2
