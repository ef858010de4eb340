#!/usr/bin/env bash
# Every stage end to end on generated data, into the embedded default store (a local folder).
# Tiny settings (test_resnet, 64 px, 40 short epochs on the CPU) so it finishes in about a minute on a laptop.
set -euo pipefail
ROOT=${ROOT:-./artifacts}
BIN=${BIN:-.venv/bin}
export PLANKTON_CACHE_DIR=${PLANKTON_CACHE_DIR:-$ROOT/.cache}
P="$BIN/plankton"
IMAGES="$ROOT/images"

step() { printf '\n== %s\n' "$*"; }

step "synth: generated dark-field and bright-field frames → $IMAGES"
"$P" synth --out "$IMAGES" --classes 4 --per-class 100 --mode both --seed 0
step "crop"
"$P" crop --root "$ROOT" --input "$IMAGES"
step "stats"
"$P" stats --root "$ROOT" --size 64
step "pretrain: MoCo v2 without labels on the train and val crops (short), then supcon starts from it"
"$P" pretrain --root "$ROOT" --model test_resnet --size 64 --epochs 3 --batch-size 64 --queue 1024 --base-lr 0.06 --save-every 3 --device cpu
step "supcon"
"$P" supcon --root "$ROOT" --model test_resnet --size 64 --epochs 40 --batch-size 64 --base-lr 0.5 --save-every 10 --device cpu --init pretrain
step "linear-sweep"
"$P" linear-sweep --root "$ROOT"
step "evaluate"
"$P" evaluate --root "$ROOT"
step "lut"
"$P" lut --root "$ROOT"
step "report: evaluate's results and the LUT's in one page"
"$P" report --root "$ROOT"
step "query: three generated frames against the LUT"
mapfile -t SAMPLES < <(for d in "$IMAGES"/*/; do find "$d" -type f | sort | tail -n 1; done | head -n 3)
"$P" query --root "$ROOT" --k 5 "${SAMPLES[@]}"
step "sql"
"$P" sql --root "$ROOT" "SELECT class, count(*) AS n FROM gallery GROUP BY 1 ORDER BY 1"

# --- vignettes: one object per image (as FlowCam, IFCB, UVP, ZooScan cut them) out to an EcoTaxa archive ---
VROOT="$ROOT/vignettes"
VIMAGES="$ROOT/vignette-images"
step "vignettes: synth one-object images → $VIMAGES"
"$P" synth --out "$VIMAGES" --kind vignettes --classes 3 --per-class 24 --imbalance 1 --seed 1
step "vignettes: crop (one object per image) → stats → supcon → linear-sweep → evaluate → lut"
"$P" crop --root "$VROOT" --input "$VIMAGES" --objects single
"$P" stats --root "$VROOT" --size 64
"$P" supcon --root "$VROOT" --model test_resnet --size 64 --epochs 10 --batch-size 32 --base-lr 0.5 --save-every 5 --device cpu
"$P" linear-sweep --root "$VROOT"
"$P" evaluate --root "$VROOT"
"$P" lut --root "$VROOT"
step "vignettes: query six of them, predictions as an EcoTaxa import archive"
mapfile -t VSAMPLES < <(for d in "$VIMAGES"/*/; do find "$d" -type f | sort | tail -n 2; done)
"$P" query --root "$VROOT" --k 3 "${VSAMPLES[@]}" --format ecotaxa --out "$VROOT/predictions.zip"

ABS=$(cd "$ROOT" && pwd)
cat <<TXT

Done. Results under $ABS:
  crops and manifest   $ABS/crop/
  splits and mean/std  $ABS/stats/stats.json
  pretrain checkpoints $ABS/pretrain/ckpt/
  checkpoints          $ABS/supcon/ckpt/
  checkpoint sweep     $ABS/sweep/sweep.md
  test report          $ABS/report/report.html
  look-up table        $ABS/lut/index.json
  EcoTaxa archive      $ABS/vignettes/predictions.zip (vignette predictions, ready for EcoTaxa's import)
TXT
