"""The report's reading of each learned codec's training: what it was fitted on, and whether its
validation loss per epoch says under-trained, over-fitted or settled."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from bench import learning
from bench.data import Split
from bench.learning import read
from bench.registry import parse_specs
from bench.runner import run


@pytest.mark.parametrize("train, validation, status", [
    ([], [], "cannot tell"),
    ([0.5], [0.4], "cannot tell"),
    ([0.9, 0.5, 0.3, 0.2], [0.8, 0.5, 0.3, 0.2], "under-trained"),  # still falling fast
    ([0.9, 0.5, 0.3, 0.2, 0.19, 0.19, 0.19, 0.19], [0.8, 0.4, 0.3, 0.25, 0.25, 0.249, 0.2485, 0.248],
     "settled"),
    ([0.9, 0.5, 0.3, 0.2, 0.15, 0.1], [0.8, 0.4, 0.3, 0.31, 0.33, 0.35], "over-fitted"),
    ([0.9, 0.5, 0.3, 0.3, 0.32, 0.35], [0.8, 0.4, 0.3, 0.31, 0.33, 0.35], "unsteady"),
    ([0.9, 0.5, 0.3, 0.2], [0.8, 0.4, 0.3, 0.303], "settled"),  # 1 % above its minimum: noise
])
def test_the_rule(train, validation, status):
    assert read(train, validation).status == status


def test_the_rule_looks_at_the_last_quarter_of_the_epochs():
    assert learning.tail(2) == 1 and learning.tail(8) == 2 and learning.tail(40) == 10
    # Flat for the last two of eight epochs after a steep fall: settled, however steep before.
    v = [1.0, 0.5, 0.3, 0.2, 0.15, 0.12, 0.1199, 0.1198]
    assert read(v, v).status == "settled"
    v[-1] = 0.11  # 4 % per epoch over the last two
    reading = read(v, v)
    assert reading.status == "under-trained" and "over the last 2 epochs of 8" in reading.note


def test_settings_of_one_model_share_a_row_and_closed_form_fits_keep_theirs():
    summary = pd.DataFrame({
        "codec": ["ar-lossy", "ar-lossy:levels=3", "ar-lossy:epochs=2", "pca50", "pca95"],
        "curve": ["ar-lossy", "ar-lossy", "ar-lossy", "pca", "pca"],
        "learned": [True] * 5, "fit_images": [100] * 5, "fit_pixels": [78400] * 5,
        "train_loss": ["0.5;0.4", "0.5;0.4", "0.5;0.45", np.nan, np.nan],
        "validation_loss": ["0.6;0.5", "0.6;0.5", "0.6;0.55", np.nan, np.nan]})
    cells = [line.split("|")[1].strip() for line in learning.section(summary, {}).splitlines()
             if line.startswith("| ")]
    assert cells[1:] == ["ar-lossy and 1 more setting (one model)", "ar-lossy:epochs=2", "pca50", "pca95"]


def test_a_model_that_kept_its_start_says_so_instead_of_reading_its_loss_curve():
    """Its loss curve is that of weights it threw away: 'under-trained' would be wrong."""
    summary = pd.DataFrame({"codec": ["ae95", "ae99"], "curve": ["ae", "ae"], "learned": [True] * 2,
                            "fit_images": [100] * 2, "fit_pixels": [78400] * 2,
                            "train_loss": ["0.5;0.4"] * 2, "validation_loss": ["0.6;0.3", "0.6;0.2"],
                            "training_kept": ["the PCA start (validation MSE 0.01)", np.nan]})
    rows = [line for line in learning.section(summary, {}).splitlines() if line.startswith("| ae")]
    assert "**start kept**: the codec kept the PCA start (validation MSE 0.01); its epochs read " in rows[0]
    assert "**under-trained**" in rows[1]


def test_a_curve_read_back_from_csv():
    assert learning.parse("0.5;0.25") == [0.5, 0.25]
    assert learning.parse(0.5) == [0.5]  # one epoch: CSV reads the cell as a number
    assert learning.parse(float("nan")) == [] and learning.parse("") == []


@pytest.fixture(scope="module")
def starved(mnist5k, tmp_path_factory):
    """ae95 for one and for three epochs on 300 digits."""
    def cut(split, n):
        return Split(split.images[:n], split.labels[:n])

    data = replace(mnist5k, train=cut(mnist5k.train, 300), validation=cut(mnist5k.validation, 60),
                   test=cut(mnist5k.test, 100))
    return run(parse_specs("ae95:epochs=1,ae95:epochs=3,pca95,png"), data, ["cpu"], rounds=3,
               cache_dir=tmp_path_factory.mktemp("cache"), tsne_families=(), progress=False,
               log=lambda m: None)


def test_a_learned_codec_row_carries_its_training(starved):
    s = starved.summary.set_index("codec")
    one, three = s.loc["ae95:epochs=1"], s.loc["ae95:epochs=3"]
    assert one["fit_images"] == 300 and one["fit_pixels"] == 300 * 784
    assert one["fit_validation_images"] == 60 and one["fit_size"] == "28x28"
    assert len(learning.parse(one["validation_loss"])) == 1
    assert len(learning.parse(three["train_loss"])) == len(learning.parse(three["validation_loss"])) == 3
    assert pd.isna(s.loc["png", "fit_images"])  # classical codecs are not fitted on anything


def test_the_report_notes_a_data_starved_learned_codec(starved, tmp_path):
    from bench import results
    from bench.report import render

    out = results.save(starved, tmp_path / "run", render=lambda d: render(results.load(d), d))
    text = (out / "report.md").read_text()
    section = text.split("### Is the learned side starved of data or training?")[1].split("## Summary")[0]
    assert text.index("## Verdict") < text.index("### Is the learned side starved") < text.index("## Summary")
    rows = {line.split("|")[1].strip(): line for line in section.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"codec", "ae95:epochs=1", "ae95:epochs=3", "pca95"}
    assert "300 images of 28x28 (0.24 Mpx); 60 validation images" in rows["ae95:epochs=1"]
    # One epoch on 300 digits ends above the PCA start (the rule's "1 epoch" case: test_the_rule).
    assert "**start kept**: the codec kept the PCA start" in rows["ae95:epochs=1"]
    v = learning.parse(starved.summary.set_index("codec").loc["ae95:epochs=3", "validation_loss"])
    t = learning.parse(starved.summary.set_index("codec").loc["ae95:epochs=3", "train_loss"])
    # On 300 digits three epochs end above the PCA start too: kept, and the epochs still read.
    assert "**start kept**" in rows["ae95:epochs=3"] and f"its epochs read *{read(t, v).status}*" in rows[
        "ae95:epochs=3"]
    assert read(t, v).status in ("under-trained", "over-fitted", "settled", "unsteady")
    assert "**cannot tell**: no validation loss" in rows["pca95"]
    assert np.isfinite(v).all()
