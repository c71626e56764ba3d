"""The t-SNE: seeded, joint, and cached under a digest that a damaged file fails."""

import numpy as np

from bench import tsne


def test_tsne_points_are_seeded_and_labelled():
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (60, 8, 8), dtype=np.uint8)
    labels = np.arange(60) % 3
    recon = {"ae95": originals // 2}
    a = tsne.tsne_points(originals, labels, recon)
    b = tsne.tsne_points(originals, labels, recon)
    assert len(a) == 120 and set(a["kind"]) == {"original", "reconstruction"}
    np.testing.assert_allclose(a[["x", "y"]], b[["x", "y"]])


def test_tsne_embeds_all_codecs_jointly_around_shared_originals():
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (900, 8, 8), dtype=np.uint8)
    recon = {f"ae{i}": originals // (i + 2) for i in range(4)}
    pts = tsne.tsne_points(originals, np.zeros(900, int), recon)
    assert len(pts) == 1000  # about 1,000 points whatever the number of codecs
    assert (pts["kind"] == "original").sum() == 200
    assert pts.groupby("codec").size().to_dict() == {"": 200, "ae0": 200, "ae1": 200, "ae2": 200,
                                                     "ae3": 200}


def test_a_damaged_cached_embedding_is_named_and_recomputed(tmp_path):
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (60, 8, 8), dtype=np.uint8)
    recon = {"ae95": originals // 2}
    first = tsne.tsne_points(originals, np.zeros(60, int), recon, cache_dir=tmp_path)
    (path,) = tmp_path.glob("tsne-*.npz")
    with np.load(path) as npz:
        xy, stored = npz["xy"].copy(), npz["digest"]
    xy[3, 1] += 1.0  # a valid file whose points are not the ones it was saved with
    np.savez(path, xy=xy, digest=stored)
    messages = []
    again = tsne.tsne_points(originals, np.zeros(60, int), recon, cache_dir=tmp_path, log=messages.append)
    assert len(messages) == 1 and str(path) in messages[0] and "digest" in messages[0]
    np.testing.assert_allclose(again[["x", "y"]], first[["x", "y"]])
    assert tsne.tsne_points(originals, np.zeros(60, int), recon, cache_dir=tmp_path,
                            log=messages.append).equals(again) and len(messages) == 1
