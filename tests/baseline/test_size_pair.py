"""Two classes that differ only by size (`plankton synth --kind sizes`): what each input keeps of the size.

Crops cut tight (`--pad 0`): with crop's default constant pad the share of padding in a letterboxed crop itself
betrays the size (a measured leak: AUROC ~1 on the object's area in the input), so the test removes it to show what
letterbox keeps of the object alone.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from plankton_core.artifacts import CROP_FEATURES
from plankton_core.baseline.stage import COLUMNS
from plankton_core.baseline.trees import fit_early
from plankton_core.crop import CropConfig
from plankton_core.data import keep_scale, keep_scale_factor, letterbox, preprocess_crop
from plankton_core.imageio import decode_image
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.synth import SIZE_PAIR, SynthConfig, generate


@pytest.fixture(scope="module")
def pair_crops(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sizes")
    images = open_store(str(tmp / "images"))
    counts = generate(images, SynthConfig(kind="sizes", per_class=40, seed=0))
    assert counts["classes"] == 2 and counts["frames"] == 80
    root = open_store(str(tmp / "root"))
    run_stage("crop", CropConfig(input=images.uri, workers=1, pad=0), root)
    table = pq.read_table(root.path / CROP_FEATURES).to_pandas()
    crops = [decode_image(root.read_bytes(k)) for k in table["crop_key"]]
    return table, crops, (table["class"] == "diatom_large").to_numpy()


def object_pixels(img: np.ndarray) -> int:
    """Pixels of a network input that stand out of its border's median by more than 30 grey levels."""
    g = img.astype(np.float64).mean(axis=-1)
    bg = np.median(np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]]))
    return int((np.abs(g - bg) > 30).sum())


def test_letterbox_confuses_the_pair_keep_scale_and_features_separate_it(pair_crops):
    table, crops, large = pair_crops
    assert set(table["class"]) == set(SIZE_PAIR)
    letterboxed = [object_pixels(letterbox(c, 32)) for c in crops]
    kept = [object_pixels(preprocess_crop(c, 96, "keep-scale")) for c in crops]
    assert 0.3 < roc_auc_score(large, letterboxed) < 0.7  # the object fills the input alike: size is gone
    assert roc_auc_score(large, kept) > 0.99  # padded, not enlarged: the pixel count is the object's
    assert roc_auc_score(large, table["object_esd"]) > 0.99


def test_the_baseline_trees_separate_the_pair(pair_crops):
    table, _, large = pair_crops
    x, y = table[COLUMNS].to_numpy(np.float64), large.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, val = order[: len(y) // 2], order[len(y) // 2 :]
    fitted = fit_early(x[train], y[train], x[val], y[val], 2, max_iter=50, patience=20)
    assert (fitted.proba(x[val]).argmax(axis=1) == y[val]).mean() >= 0.95


def test_keep_scale_pads_small_and_shrinks_large():
    small = np.full((10, 20), 200, np.uint8)
    small[3:7, 5:15] = 20
    out = keep_scale(small, 32)
    assert out.shape == (32, 32, 3) and (out[..., 0] < 100).sum() == 40  # the object's 40 pixels, not enlarged
    assert out[0, 0, 0] == 200 and keep_scale_factor(10, 20, 32) == 1.0
    large = np.zeros((64, 128), np.uint8)
    assert keep_scale(large, 32).shape == (32, 32, 3) and keep_scale_factor(64, 128, 32) == 0.25
    assert np.array_equal(keep_scale(large, 32), letterbox(large, 32))  # larger ones: shrunk as letterbox does


def test_supcon_keep_scale_is_recorded_and_used_downstream(tmp_path):
    from pipeline_fixtures import make_stats_root

    from plankton_core.checkpoint import load_checkpoint
    from plankton_core.embedding import load_embedder
    from plankton_core.errors import BadInputError
    from plankton_core.supcon.config import SupConConfig

    store = make_stats_root(str(tmp_path / "root"), per_class=8)
    cfg = SupConConfig(
        model="test_resnet", epochs=1, batch_size=8, save_every=1, device="cpu", workers=0, preprocess="keep-scale"
    )
    run_stage("supcon", cfg, store)
    assert load_checkpoint(store, "supcon/ckpt/last.pt")["config"]["preprocess"] == "keep-scale"
    assert load_embedder(store, "supcon/ckpt/last.pt").preprocess == "keep-scale"
    with pytest.raises(BadInputError, match="keep-scale"):
        SupConConfig(preprocess="keep-scale", recipe="supcontrast").validate()
