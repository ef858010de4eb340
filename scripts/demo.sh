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
"$P" synth --out "$IMAGES" --classes 5 --per-class 100 --mode both --seed 0
step "synth: far-OOD images (textures, noise, squares: none of the classes) → $ROOT/ood-images"
"$P" synth --out "$ROOT/ood-images" --kind ood --per-class 15 --seed 1
step "crop"
"$P" crop --root "$ROOT" --input "$IMAGES"
step "stats: one class held out whole (split unseen), the near-OOD set of the open-set figures"
"$P" stats --root "$ROOT" --size 64 --unseen-classes 1
step "baseline: boosted trees on the crops' morphometric features (the classical tool evaluate compares with)"
"$P" baseline --root "$ROOT"
step "pretrain: MoCo v2 without labels on the train and val crops (short), then supcon starts from it"
"$P" pretrain --root "$ROOT" --model test_resnet --size 64 --epochs 3 --batch-size 64 --queue 1024 --base-lr 0.06 --save-every 3 --device cpu
step "supcon"
"$P" supcon --root "$ROOT" --model test_resnet --size 64 --epochs 40 --batch-size 64 --base-lr 0.5 --save-every 10 --device cpu --init pretrain
step "linear-sweep"
"$P" linear-sweep --root "$ROOT"
step "evaluate"
"$P" evaluate --root "$ROOT"
step "lut: the index, its pruning, and the unknown threshold (open set: lut/ood.json)"
"$P" lut --root "$ROOT" --ood "$ROOT/ood-images"
step "audit: likely label mistakes (confident learning) and near-duplicates across splits"
"$P" audit --root "$ROOT"
step "report: evaluate's results, the LUT's and the audit's in one page"
"$P" report --root "$ROOT"
step "query: three generated frames against the LUT"
mapfile -t SAMPLES < <(for d in "$IMAGES"/*/; do find "$d" -type f | sort | tail -n 1; done | head -n 3)
"$P" query --root "$ROOT" --k 5 "${SAMPLES[@]}"
step "sql"
"$P" sql --root "$ROOT" "SELECT class, count(*) AS n FROM gallery GROUP BY 1 ORDER BY 1"
step "classify: a generated new sample (two stations) through the LUT → $ROOT/classify/new-sample/"
"$P" synth --out "$ROOT/new-sample" --classes 4 --per-class 6 --mode both --seed 7
"$P" classify --root "$ROOT" --input "$ROOT/new-sample" --name new-sample
"$P" sql --root "$ROOT" "SELECT sample_id, class, count, round(proportion_cc, 3) AS raw_share, method, round(proportion, 3) AS corrected, round(proportion_low, 3) AS low, round(proportion_high, 3) AS high FROM samples WHERE count > 0 OR proportion >= 0.001 ORDER BY 1, 2"

# --- vignettes: one object per image (as FlowCam, IFCB, UVP, ZooScan cut them) out to an EcoTaxa archive ---
VROOT="$ROOT/vignettes"
VIMAGES="$ROOT/vignette-images"
step "vignettes: synth one-object images → $VIMAGES"
"$P" synth --out "$VIMAGES" --kind vignettes --classes 3 --per-class 24 --imbalance 1 --seed 1
step "vignettes: crop (one object per image) → stats → baseline → supcon → linear-sweep → evaluate → lut"
"$P" crop --root "$VROOT" --input "$VIMAGES" --objects single
"$P" stats --root "$VROOT" --size 64 --label-noise 0.05 --noise-seed 0
"$P" baseline --root "$VROOT"
"$P" supcon --root "$VROOT" --model test_resnet --size 64 --epochs 10 --batch-size 32 --base-lr 0.5 --save-every 5 --device cpu
"$P" linear-sweep --root "$VROOT"
"$P" evaluate --root "$VROOT"
"$P" lut --root "$VROOT"
step "vignettes: audit against the 5% of labels stats flipped; suspects as an EcoTaxa archive for review"
"$P" audit --root "$VROOT" --format ecotaxa --out "$VROOT/suspects.zip"
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
  the answer           $ABS/lut/answer.json (LUT, head, morphometric features or both: val's choice, all on test, vs the baseline)
  count corrections    $ABS/lut/quantification.json (CC, ACC, PCC, PACC, EMQ on test bags; the one val chose)
  new sample classified $ABS/classify/new-sample/ (objects.parquet, samples.parquet, report.html)
  EcoTaxa archive      $ABS/vignettes/predictions.zip (vignette predictions, ready for EcoTaxa's import)
  label audit          $ABS/vignettes/audit/evaluation.json; suspects for review $ABS/vignettes/suspects.zip
TXT
