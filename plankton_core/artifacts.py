"""Each stage's public keys, named once. A stage reads another stage's outputs only through these names.

Keys are relative to the pipeline root. A stage writes only under its own
prefix; everything here under another stage's prefix is read-only to it.
"""

from __future__ import annotations

# crop
CROP_MANIFEST = "crop/manifest.parquet"
CROP_CROPS = "crop/crops"
CROP_RUN = "crop/run.json"
CROP_FEATURES = "crop/features.parquet"  # crop_key, class and the morphometric features of every kept object

# stats
STATS_SPLITS = "stats/splits.parquet"
STATS_CLASSES = "stats/classes.json"
STATS_JSON = "stats/stats.json"
STATS_LABEL_NOISE = "stats/label_noise.parquet"  # `--label-noise`: the flips (read only to evaluate an audit)

# pretrain
PRETRAIN_CKPT = "pretrain/ckpt"
PRETRAIN_METRICS = "pretrain/metrics.jsonl"
PRETRAIN_RUN = "pretrain/run.json"
PRETRAIN_UNLABELED = (
    "pretrain/unlabeled"  # `--unlabeled … --crop`: a crop run of the unlabelled images (its own crop/ below this)
)

# supcon
SUPCON_CKPT = "supcon/ckpt"
SUPCON_METRICS = "supcon/metrics.jsonl"
SUPCON_RUN = "supcon/run.json"

# linear-sweep
SWEEP_SELECTION = "sweep/selection.json"
SWEEP_TABLE = "sweep/sweep.parquet"
SWEEP_MARKDOWN = "sweep/sweep.md"
SWEEP_PLOT = "sweep/sweep.png"
SWEEP_FEATURES = "sweep/features"
SWEEP_HEADS = "sweep/heads"

# evaluate
EVAL_METRICS = "evaluate/metrics.json"
EVAL_PREDICTIONS = "evaluate/predictions.parquet"
EVAL_PER_CLASS = "evaluate/per_class.parquet"
EVAL_CONFUSIONS = "evaluate/confusions.parquet"
EVAL_CONFUSION_PNG = "evaluate/confusion.png"
EVAL_REPORT_HTML = "evaluate/report.html"
EVAL_REPORT_MD = "evaluate/report.md"

# baseline
BASELINE_PREDICTIONS = "baseline/predictions.parquet"  # crop_key, class, split, pred (+ per-class probabilities)
BASELINE_METRICS = "baseline/metrics.json"

# lut
LUT_INDEX_JSON = "lut/index.json"
LUT_INDEX = {"full": "lut/index.faiss", "pruned": "lut/index_pruned.faiss"}
LUT_GALLERY = {"full": "lut/gallery.parquet", "pruned": "lut/gallery_pruned.parquet"}
LUT_EMBEDDINGS = "lut/embeddings.npy"  # row-aligned with lut/gallery.parquet
LUT_HELDOUT = "lut/heldout.parquet"  # val/test crops outside the gallery (calibration and evaluation)
LUT_HELDOUT_EMBEDDINGS = "lut/heldout.npy"
LUT_PRUNE_SWEEP = "lut/prune_sweep.parquet"
LUT_PRUNE_PLOT = "lut/prune_sweep.png"
LUT_RETRIEVAL = "lut/retrieval.json"
LUT_QUANTIFICATION = "lut/quantification.json"  # quantification methods on val/test bags (APP), the choice
LUT_QUANT_PLOT = "lut/quantification.png"  # true vs estimated proportion per method, test bags
LUT_QUANT_CALIBRATION = "lut/quantification_calibration.npz"  # what plankton_core.quantify needs per sample
LUT_OPEN_SET = "lut/open_set.npz"  # open-set fit: linear head, Gaussians, ViM, val scores (plankton_core.openset)
LUT_OOD = "lut/ood.json"  # open-set figures on test per score and OOD set, and how the score was chosen
LUT_OOD_PLOT = "lut/ood.png"  # score histograms, known vs unknown
LUT_ANSWER = "lut/answer.json"  # the answer query/classify give (LUT, head, features, both), chosen on val; test
LUT_ANSWER_ARRAYS = "lut/answer.npz"  # the features' train mean/std and the chosen head
LUT_INDEX_FEATURES = "lut/index_features.faiss"  # the gallery on [embedding ; w · features] when the answer uses it
LUT_CHANGES = "lut/changes.parquet"  # `lut --add`: what each addition added, relabelled, removed
LUT_ADDED = "lut/added"  # `lut --add`: the images of objects added to the gallery

# detect
DETECT_CKPT = "detect/ckpt"
DETECT_BEST = (
    "detect/ckpt/best.pt"  # the epoch with the best val AP: what detect-predict and crop --segmenter detector load
)
DETECT_TRAIN_METRICS = "detect/train.jsonl"  # the trainer's line per epoch (loss, lr, images/s)
DETECT_VAL = "detect/val.jsonl"  # COCO figures on val after each epoch
DETECT_METRICS = "detect/metrics.json"  # test: the 12 COCO figures, per-class AP, best epoch
DETECT_EVAL_TXT = "detect/eval.txt"  # COCOeval.summarize()'s printout on test
DETECT_PR = "detect/pr.png"
DETECT_PAGE = "detect/test_frames.png"
DETECT_TEST_DETECTIONS = "detect/test_detections.parquet"

# audit
AUDIT_SCORES = "audit/scores.parquet"
AUDIT_SUSPECTS = "audit/suspects.parquet"
AUDIT_DUPLICATES = "audit/duplicates.parquet"
AUDIT_EVALUATION = "audit/evaluation.json"
AUDIT_SUMMARY = "audit/summary.json"
