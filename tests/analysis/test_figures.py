"""swift_plugins.analysis.figures: both PNGs of a hand-made analysis decode at full size and show the recommendation."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from swift_plugins.analysis import simulate as S
from swift_plugins.analysis.figures import SCATTER_MAX_POINTS, plot_packing_efficiency, plot_token_distribution
from swift_plugins.analysis.outputs import Analysis

SIZE = (1540, 1100)  # figsize 14 x 10 inches at 110 dpi
PURPLE = (148, 103, 189)  # tab:purple, the recommended max_length in token_distribution.png (nothing else is)
VIRIDIS_ENDS = ((68, 1, 84), (253, 231, 37))  # the density colour map of more than SCATTER_MAX_POINTS samples


def small_analysis(total, image, max_lengths, split_samples=None, packing_buffer=None) -> Analysis:
    """What load_analysis returns, built from hand-made lengths: describe() stats and simulate() entries."""
    total, image = np.asarray(total, np.int64), np.asarray(image, np.int64)
    sims = S.simulate(total, max_lengths, ["ffd", "next_fit"], seed=0, effective_batch_size=2, num_train_epochs=1,
                      packing_buffer=packing_buffer, min_fill_ratio=0.0, drop_last=False, split_samples=split_samples)
    stats = {"num_samples": len(total), "inputs": {"train_jsonl": ["a.jsonl", "b.jsonl"]},
             **S.describe(total, "total_tokens")}
    return Analysis("in-memory", stats, sims, {}, total - image, image, total)


@pytest.fixture(scope="module")
def analysis():
    # 7 samples; at 100 the records of 120 and 150 are overlong: split into 60 + 60 and 75 + 75
    total, image = [30, 60, 90, 120, 150, 45, 75], [10, 20, 30, 40, 50, 0, 25]
    split = {100: (np.array([30, 60, 90, 60, 60, 75, 75, 45, 75]), 2, 0), 200: (np.array(total), 0, 0)}
    return small_analysis(total, image, [100, 200], split, packing_buffer=4)


def decoded(path) -> np.ndarray:
    """The PNG at ``path`` as RGB pixels, after checking it is a full-size, non-blank PNG."""
    with Image.open(path) as im:
        assert (im.format, im.size) == ("PNG", SIZE)
        rgb = np.asarray(im.convert("RGB"))
    assert (rgb < 128).mean() > 0.005, "almost blank figure"
    return rgb


def pixels_of(rgb: np.ndarray, color) -> int:
    return int((rgb == color).all(axis=-1).sum())


def test_token_distribution_is_written_and_draws_the_recommended_length(analysis, tmp_path):
    plot_token_distribution(analysis, str(tmp_path / "plain.png"))
    plot_token_distribution(analysis, str(tmp_path / "rec.png"), recommended=200)
    plot_token_distribution(analysis, str(tmp_path / "between.png"), recommended=150)  # not a simulated length
    assert sorted(p.name for p in tmp_path.iterdir()) == ["between.png", "plain.png", "rec.png"]  # no temp files
    plain, rec, between = (decoded(tmp_path / n) for n in ("plain.png", "rec.png", "between.png"))
    assert pixels_of(plain, PURPLE) == 0
    assert pixels_of(rec, PURPLE) > 500 and pixels_of(between, PURPLE) > 200
    assert (rec != between).any()
    assert all(pixels_of(plain, c) == 0 for c in VIRIDIS_ENDS)  # 7 samples: a scatter, no density map


def test_packing_efficiency_is_written_and_draws_the_recommended_length(analysis, tmp_path):
    plot_packing_efficiency(analysis, str(tmp_path / "plain.png"))
    plot_packing_efficiency(analysis, str(tmp_path / "rec.png"), recommended=200)
    plot_packing_efficiency(analysis, str(tmp_path / "between.png"), recommended=150)
    plain, rec, between = (decoded(tmp_path / n) for n in ("plain.png", "rec.png", "between.png"))
    assert (plain != rec).any() and (rec != between).any() and (plain != between).any()


def test_a_figure_is_replaced_whole(analysis, tmp_path):
    path = tmp_path / "token_distribution.png"
    path.write_bytes(b"an older figure")
    plot_token_distribution(analysis, str(path))
    decoded(path)
    assert [p.name for p in tmp_path.iterdir()] == ["token_distribution.png"]


def test_one_max_length_and_one_sample_still_plot(tmp_path):
    one = small_analysis([50], [10], [100])
    assert one.max_lengths == [100]
    plot_token_distribution(one, str(tmp_path / "t.png"), recommended=100)
    plot_packing_efficiency(one, str(tmp_path / "p.png"), recommended=100)
    decoded(tmp_path / "t.png")
    decoded(tmp_path / "p.png")


def test_more_samples_than_the_scatter_limit_show_a_density_map(tmp_path):
    rng = np.random.default_rng(0)
    total = rng.integers(100, 5000, SCATTER_MAX_POINTS + 1000)
    many = small_analysis(total, np.minimum(total - 1, 64), [4000, 8000])
    plot_token_distribution(many, str(tmp_path / "t.png"), recommended=4000)
    rgb = decoded(tmp_path / "t.png")
    assert all(pixels_of(rgb, c) > 0 for c in VIRIDIS_ENDS)  # the hexbin and its colour bar
    assert pixels_of(rgb, PURPLE) > 500


def test_a_max_length_below_every_sample_still_plots(tmp_path):
    """At 100 both samples are overlong: 0 packs, no L1 bound there (it used to divide by zero)."""
    short = small_analysis([300, 400], [10, 10], [100, 500])
    assert [(e["global_max_length"], e["num_packs"], e["l1_bound"]) for e in short.simulations
            if e["strategy"] == "ffd"] == [(100, 0, 0), (500, 2, 2)]
    plot_packing_efficiency(short, str(tmp_path / "p.png"), recommended=500)
    decoded(tmp_path / "p.png")
