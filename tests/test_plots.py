import numpy as np
import pytest

from idistill.analysis import plots
from idistill.schedule import adaptive_alpha

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width=300, min_height=200):
    """A real, non-trivial PNG image: signature, > 1 kB, plausible pixel shape."""
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1024
    height, width, channels = imread(path).shape
    assert width >= min_width and height >= min_height and channels in (3, 4)


RNG = np.random.default_rng(0)
SAMPLES = {
    "baseline": RNG.lognormal(-14, 1.5, 500),
    "intra-distill": RNG.lognormal(-13, 0.6, 500),
}
PRUNING = {
    "baseline": [(0.0, 30.1), (0.1, 29.8), (0.2, 28.0), (0.3, 24.5), (0.4, 17.2), (0.5, 8.0)],
    "intra-distill": [(0.0, 31.0), (0.1, 31.0), (0.2, 30.6), (0.3, 29.4), (0.4, 26.0)],
}
LOSSES = {"baseline": [(0, 9.0), (1000, 5.1), (2000, 4.3)], "ID": [(0, 9.0), (1000, 4.9)]}
K_POINTS = {"X-ID": [(2, 35.1, 0.2), (3, 35.6, 0.1), (4, 35.7, 0.0)], "R-Drop": [(2, 35.0, 0.0)]}


def test_sensitivity_violins_writes_png(tmp_path):
    out = plots.sensitivity_violins(SAMPLES, tmp_path / "nested" / "violins.png")
    assert out == tmp_path / "nested" / "violins.png"
    assert_png(out)


def test_sensitivity_during_training_writes_png_with_and_without_std(tmp_path):
    steps, top, bottom = [100, 1000, 10000], [1e-4, 5e-5, 2e-5], [1e-7, 3e-7, 8e-7]
    plain = plots.sensitivity_during_training(steps, top, bottom, tmp_path / "a.png")
    twin = plots.sensitivity_during_training(
        steps, top, bottom, tmp_path / "b.png", std=[3e-5, 2e-5, 1e-5], label="baseline"
    )
    assert_png(plain)
    assert_png(twin)
    assert plain.read_bytes() != twin.read_bytes()


def test_pruning_curves_writes_two_panel_png(tmp_path):
    out = plots.pruning_curves(PRUNING, tmp_path / "pruning.png")
    assert_png(out, min_width=900)  # two panels side by side


def test_loss_curves_writes_png(tmp_path):
    assert_png(plots.loss_curves(LOSSES, tmp_path / "loss.png"))


def test_the_seeds_of_a_method_share_its_colour_and_differ_in_line_style():
    names = ["baseline, seed 1", "baseline, seed 2", "intra, seed 1", "intra, seed 2"]
    styles = [plots.line_style(n, names) for n in names]
    assert styles[0]["color"] == styles[1]["color"] != styles[2]["color"] == styles[3]["color"]
    assert styles[0]["linestyle"] != styles[1]["linestyle"]
    assert styles[0]["linestyle"] == styles[2]["linestyle"]
    assert plots.line_style("a", ["a", "b"])["color"] != plots.line_style("b", ["a", "b"])["color"]


def test_metric_vs_k_writes_png(tmp_path):
    assert_png(plots.metric_vs_k(K_POINTS, tmp_path / "k.png"))


def test_alpha_schedule_writes_png(tmp_path):
    assert_png(plots.alpha_schedule(5.0, 5, 10, 50_000, tmp_path / "alpha.png"))


def test_plots_depend_on_their_data(tmp_path):
    other = {"baseline": [(r, v - 3) for r, v in PRUNING["baseline"]]}
    a = plots.pruning_curves(PRUNING, tmp_path / "a.png")
    b = plots.pruning_curves(other, tmp_path / "b.png")
    assert a.read_bytes() != b.read_bytes()
    c = plots.alpha_schedule(5.0, 5, 10, 1000, tmp_path / "c.png")
    d = plots.alpha_schedule(3.0, 2, 10, 1000, tmp_path / "d.png")
    assert c.read_bytes() != d.read_bytes()


def test_violin_tick_labels_carry_the_std(tmp_path, monkeypatch):
    seen = {}
    real_save = plots._save

    def spy(fig, path):
        seen["labels"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    plots.sensitivity_violins({"a": np.array([1.0, 3.0])}, tmp_path / "v.png")
    assert seen["labels"] == ["a\nstd 1.0e+00"]


def test_alpha_points_come_from_adaptive_alpha():
    n, alpha, p, q = 50_000, 5.0, 5, 10
    steps, values = plots._alpha_points(alpha, p, q, n)
    assert steps[0] == 0 and steps[-1] == n
    assert values[steps == n // q] == pytest.approx(1.0)
    assert values[steps == n // p] == pytest.approx(alpha)
    expected = [adaptive_alpha(alpha, int(s), n, p, q) for s in steps]
    np.testing.assert_allclose(values, expected)


def test_alpha_schedule_draws_the_alpha_points(tmp_path, monkeypatch):
    seen = {}
    real_save = plots._save

    def spy(fig, path):
        seen["xy"] = fig.axes[0].get_lines()[0].get_xydata()
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    plots.alpha_schedule(5.0, 5, 10, 2000, tmp_path / "alpha.png")
    steps, values = plots._alpha_points(5.0, 5, 10, 2000)
    np.testing.assert_allclose(seen["xy"], np.column_stack([steps, values]))


@pytest.mark.parametrize(
    "p, q, n, match",
    [
        (10, 5, 1000, "p=10, q=5"),
        (5, 5, 1000, "p=5, q=5"),
        (0, 10, 1000, "p=0"),
        (-1, 10, 1000, "p=-1"),
        (5, 10, 0, r"total_updates must be >= 1 \(got 0\)"),
    ],
)
def test_alpha_schedule_refuses_bad_sentinels(tmp_path, p, q, n, match):
    with pytest.raises(ValueError, match=match):
        plots.alpha_schedule(5.0, p, q, n, tmp_path / "alpha.png")
    assert not (tmp_path / "alpha.png").exists()


def test_alpha_schedule_refuses_alpha_that_is_not_adaptive(tmp_path):
    with pytest.raises(ValueError, match=r"alpha must be > 1 .*got 1\)"):
        plots.alpha_schedule(1.0, 5, 10, 1000, tmp_path / "alpha.png")


@pytest.mark.parametrize(
    "draw",
    [
        lambda path: plots.sensitivity_violins({}, path),
        lambda path: plots.pruning_curves({}, path),
        lambda path: plots.loss_curves({}, path),
        lambda path: plots.metric_vs_k({}, path),
    ],
    ids=["violins", "pruning", "loss", "k"],
)
def test_empty_run_dicts_are_refused(tmp_path, draw):
    with pytest.raises(ValueError, match="is empty; give at least one run"):
        draw(tmp_path / "x.png")


@pytest.mark.parametrize(
    "draw, match",
    [
        (lambda p: plots.sensitivity_violins({"b": np.array([])}, p), r"samples\['b'\] is empty"),
        (lambda p: plots.pruning_curves({"b": []}, p), r"curves\['b'\] is empty"),
        (lambda p: plots.loss_curves({"b": []}, p), r"curves\['b'\] is empty"),
        (lambda p: plots.metric_vs_k({"b": []}, p), r"points\['b'\] is empty"),
        (lambda p: plots.sensitivity_during_training([], [], [], p), "steps is empty"),
    ],
    ids=["violins", "pruning", "loss", "k", "training"],
)
def test_empty_series_are_refused(tmp_path, draw, match):
    with pytest.raises(ValueError, match=match):
        draw(tmp_path / "x.png")


def test_pruning_curves_need_a_point_at_ratio_zero(tmp_path):
    with pytest.raises(ValueError, match=r"ratio 0 .*lowest ratio 0.1"):
        plots.pruning_curves({"b": [(0.1, 30.0), (0.2, 29.0)]}, tmp_path / "x.png")


def test_pruning_curves_refuse_ratios_outside_unit_interval(tmp_path):
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        plots.pruning_curves({"b": [(0.0, 30.0), (10.0, 29.0)]}, tmp_path / "x.png")


def test_mismatched_training_series_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"bottom80 must have one value per step \(2 steps, got 1"):
        plots.sensitivity_during_training([1, 2], [1e-4, 1e-5], [1e-7], tmp_path / "x.png")


def test_metric_vs_k_refuses_points_that_are_not_triples(tmp_path):
    with pytest.raises(ValueError, match=r"points\['b'\] must hold 3-tuples"):
        plots.metric_vs_k({"b": [(2, 35.0)]}, tmp_path / "x.png")
