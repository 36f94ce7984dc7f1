"""Every shipped config composes; bad input is refused with a message naming key and fix."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from idistill.config import ConfigError, settings_from_dict

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["task", "model", "method", "divergence", "schedule", "trainer", "tracking"]


def _settings(make_cfg, overrides):
    return settings_from_dict(OmegaConf.to_container(make_cfg(overrides), resolve=True))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(make_cfg, group):
    for option in _options(group):
        extra = ["lang=de"] if group == "task" else []
        cfg = make_cfg([f"{group}={option}", *extra])
        assert OmegaConf.to_container(cfg, resolve=True)[group] is not None


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_and_validates(make_cfg, experiment):
    settings = _settings(make_cfg, [f"experiment={experiment}"])
    assert settings.method.k >= 1


def test_iwslt14_lang_is_a_top_level_key(make_cfg):
    cfg = make_cfg(["task=iwslt14", "lang=de"])
    assert cfg.lang == "de" and cfg.task.name == "iwslt14"
    assert _settings(make_cfg, ["task=iwslt14", "lang=de"]).experiment_name == "iwslt14-de"


def test_adaptive_total_updates_follow_the_trainer(make_cfg):
    assert make_cfg(["trainer.max_updates=123"]).schedule.total_updates == 123


def test_typo_in_a_top_level_key_is_refused(make_cfg):
    with pytest.raises(ConfigCompositionException, match="alpah"):
        make_cfg(["alpah=5"])
    with pytest.raises(ConfigError, match="unknown top-level key alpah"):
        _settings(make_cfg, ["+alpah=5"])


def test_typo_inside_a_group_is_refused(make_cfg):
    with pytest.raises(ConfigCompositionException, match="method.kk"):
        make_cfg(["method.kk=3"])
    with pytest.raises(ConfigError, match="unknown key method.kk"):
        _settings(make_cfg, ["+method.kk=3"])


def test_near_miss_keys_are_refused_with_the_nearest_known_one(make_cfg):
    with pytest.raises(ConfigError) as err:
        _settings(make_cfg, ["+metod.alpha=1", "+method.alph=2", "+trainer.lrr=1"])
    assert err.value.problems == [
        "unknown top-level key metod (did you mean method?)",
        "unknown key trainer.lrr (did you mean trainer.lr?)",
        "unknown key method.alph (did you mean method.alpha?)",
    ]


def test_every_problem_of_a_config_is_reported_at_once(make_cfg):
    with pytest.raises(ConfigError) as err:
        _settings(make_cfg, ["method.k=0", "method.alpha=-1", "trainer.lr=0", "schedule.p=20"])
    assert err.value.problems == [
        "method.k must be >= 1 (got 0)",
        "method.alpha must be >= 0 (got -1.0)",
        "schedule.p must be < schedule.q (got p=20, q=10)",
        "trainer.lr must be > 0 (got 0.0)",
    ]
    with pytest.raises(ConfigError) as err:
        _settings(make_cfg, ["trainer.lr=abc", "method.k=x", "seed=2"])
    assert err.value.problems == [
        "trainer.lr must be a number (got 'abc')",
        "method.k must be a whole number (got 'x')",
    ]


@pytest.mark.parametrize("value", ["-5", "abc"])
def test_max_updates_is_reported_as_typed_not_as_the_schedule_it_feeds(make_cfg, value):
    with pytest.raises(ConfigError) as err:
        _settings(make_cfg, [f"trainer.max_updates={value}"])
    [problem] = err.value.problems  # not schedule.total_updates, its interpolation
    assert problem.startswith("trainer.max_updates must be")
    with pytest.raises(ConfigError, match=r"^schedule.total_updates must be > 0 \(got -3\)$"):
        _settings(make_cfg, ["schedule.total_updates=-3"])  # typed by the user: named


def test_a_missing_lang_and_a_bad_source_are_both_reported(make_cfg, tmp_path):
    with pytest.raises(ConfigError) as err:
        _settings(make_cfg, ["task=parallel_text", f"task.source={tmp_path / 'nonexistent'}"])
    assert err.value.problems == [
        "task=parallel_text needs lang=<source language> (got None)",
        f"task.source={tmp_path / 'nonexistent'} does not exist (a folder or archive of the "
        "task's data)",
    ]


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (["task=iwslt14", "lang=de"], "iwslt14-de intra_distill K3 a5 s1"),
        (["method=baseline", "seed=2"], "synthetic baseline s2"),
        (["method=rdrop", "method.alpha=2.5"], "synthetic rdrop K2 a2.5 s1"),
        (["method.alpha=0"], "synthetic intra_distill K3 a0 s1"),
        (["experiment=glue_cpu"], "glue-mrpc intra_distill K3 a1.5 s1"),
    ],
)
def test_a_run_is_named_by_what_ran(make_cfg, overrides, name):
    assert _settings(make_cfg, overrides).run_name == name


def test_unknown_group_option_lists_the_valid_ones():
    with (
        initialize_config_module("idistill.conf", version_base="1.3"),
        pytest.raises(MissingConfigException) as err,
    ):
        compose("config", overrides=["task=nope"])
    assert "synthetic" in str(err.value) and "iwslt14" in str(err.value)


def test_wrong_type_for_seed_is_refused(make_cfg):
    with pytest.raises(ConfigCompositionException):
        make_cfg(["seed=abc"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.k=0"], r"method.k must be >= 1 \(got 0\)"),
        (["method.alpha=-1"], r"method.alpha must be >= 0"),
        (["schedule.p=10", "schedule.q=5"], r"schedule.p must be < schedule.q"),
        (["schedule.p=0"], r"schedule.p must be > 0"),
        (["divergence=mse"], r"divergence=mse is for regression"),
        (["trainer.max_tokens=32"], r"trainer.max_tokens=32 is smaller than the longest"),
        (["method.passes=twice"], r"method.passes must be one of"),
        (["task=iwslt14"], r"task=iwslt14 needs lang="),
        (["task=iwslt14", "lang=xx"], r"needs lang=.*got xx"),
        (["trainer.patience=-1"], r"trainer.patience must be a whole number >= 0 .*got -1"),
        (["trainer.patience=abc"], r"trainer.patience must be a whole number \(got 'abc'\)"),
        (["trainer.lr=abc"], r"trainer.lr must be a number \(got 'abc'\)"),
        (["trainer.max_updates=abc"], r"trainer.max_updates must be a whole number"),
        (["trainer.max_epochs=1.5"], r"trainer.max_epochs must be a whole number or null"),
        (["trainer.fused_loss=3"], r"trainer.fused_loss must be true or false \(got 3\)"),
        (["method.k=true"], r"method.k must be a whole number \(got True\)"),
        (["trainer.log_every=0"], r"trainer.log_every must be >= 1 \(got 0\)"),
        (["trainer.max_updates=-5"], r"trainer.max_updates must be > 0 \(got -5\)"),
        (["trainer.validate_every=-1"], r"trainer.validate_every must be >= 0"),
        (["trainer.max_epochs=0"], r"trainer.max_epochs must be >= 1 or null \(got 0\)"),
        (["trainer.num_threads=-2"], r"trainer.num_threads must be >= 1 or null"),
        (["trainer.patience=1.5"], r"trainer.patience must be a whole number"),
        (["trainer.best_metric=chrf"], r"trainer.best_metric must be loss or bleu .*'chrf'"),
        (["trainer.valid_bleu_sentences=0"], r"trainer.valid_bleu_sentences must be >= 1"),
        (["trainer.test=false", "analysis=pruning"], r"analysis=pruning scores the test set"),
    ],
)
def test_bad_values_are_refused_with_key_and_fix(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _settings(make_cfg, overrides)


def test_regression_task_refuses_probability_divergences(make_cfg):
    with pytest.raises(ConfigError, match="regression task: use divergence=mse"):
        _settings(make_cfg, ["task.type=regression", "divergence=x"])
    assert _settings(make_cfg, ["task.type=regression", "divergence=mse"]).method.divergence


def test_alpha_zero_costs_one_pass(make_cfg):
    assert _settings(make_cfg, ["method.alpha=0", "method.k=3"]).method.effective_k == 1
    assert _settings(make_cfg, ["method.alpha=1", "method.k=3"]).method.effective_k == 3


def test_config_hash_ignores_where_a_run_is_saved(make_cfg):
    a = _settings(make_cfg, ["trainer.resume=true"]).config_hash()
    b = _settings(make_cfg, ["trainer.save_dir=/elsewhere"]).config_hash()
    c = _settings(make_cfg, ["method.alpha=1"]).config_hash()
    assert a == b != c


def test_cell_hash_ignores_the_seed_and_the_data_dir(make_cfg):
    # data_dir comes from $IDISTILL_DATA or ~: it differs between shells and hosts
    s = _settings(make_cfg, [])
    elsewhere = dataclasses.replace(s, seed=s.seed + 1, data_dir=Path("/elsewhere/data"))
    assert elsewhere.cell_hash() == s.cell_hash()
    assert elsewhere.config_hash() != s.config_hash()  # resume still tells them apart
    other_alpha = dataclasses.replace(s, method=dataclasses.replace(s.method, alpha=1.0))
    assert other_alpha.cell_hash() != s.cell_hash()


def test_a_source_folder_hashes_alike_however_it_is_spelled(make_cfg, tmp_path, monkeypatch):
    # trainer.resume=true and the report find runs by hash: `../data/raw` from one folder and
    # the absolute path are the same data
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    s = _settings(make_cfg, [])
    hashes = [
        dataclasses.replace(s, task={**s.task, "source": source}).config_hash()
        for source in ("../data/raw", str(tmp_path / "data" / "raw"), "../data/other")
    ]
    assert hashes[0] == hashes[1] != hashes[2]


def test_a_single_include_or_exclude_pattern_is_a_one_element_list(make_cfg):
    a = _settings(make_cfg, ["analysis.include=encoder_layers.*", "analysis.exclude=*fc2*"])
    assert a.analysis.include == ["encoder_layers.*"] and a.analysis.exclude == ["*fc2*"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("analysis.ratios=0.3", "analysis.ratios must be a list, e.g. [0,0.3] (got 0.3)"),
        (
            "analysis.ratios=[0,0.125,0.5]",
            "analysis.ratios are logged with step = the percentage: use whole percents such as "
            "0.1, 0.25 (got 0.125)",
        ),
    ],
)
def test_pruning_ratios_that_are_no_list_of_whole_percents_are_refused(make_cfg, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _settings(make_cfg, [override])


def test_whole_percent_ratios_pass_despite_float_rounding(make_cfg):
    ratios = [0, 0.01, 0.29, 0.57, 0.99]  # 0.57 * 100 = 56.99999999999999
    assert _settings(make_cfg, [f"analysis.ratios=[{','.join(map(str, ratios))}]"]).analysis.ratios


def test_a_patience_the_cap_cannot_reach_is_warned_about(make_cfg, caplog):
    overrides = ["trainer.max_updates=100", "trainer.validate_every=25"]  # 4 validations
    _settings(make_cfg, [*overrides, "trainer.patience=3"])
    assert "can never stop" not in caplog.text
    _settings(make_cfg, [*overrides, "trainer.patience=4"])
    assert "trainer.patience=4 can never stop the run" in caplog.text


def test_early_stopping_leaves_the_hash_of_runs_without_it_unchanged(make_cfg):
    plain, off = _settings(make_cfg, []), _settings(make_cfg, ["trainer.patience=0"])
    assert plain.config_hash() == off.config_hash()
    # a run that skips its test trained the same model: one cell with the tested runs
    assert _settings(make_cfg, ["trainer.test=false"]).cell_hash() == plain.cell_hash()
    assert _settings(make_cfg, ["trainer.patience=5"]).config_hash() != plain.config_hash()


def test_one_pass_hashes_alike_in_either_pass_layout(make_cfg):
    # an experiment may set method.passes=loop for its K=3 runs without making its baselines
    # (K=1, where loop and concat run the same single forward) a new cell
    concat = _settings(make_cfg, ["method=baseline", "method.passes=concat"])
    loop = _settings(make_cfg, ["method=baseline", "method.passes=loop"])
    assert loop.config_hash() == concat.config_hash()
    k3 = [_settings(make_cfg, [f"method.passes={p}"]).config_hash() for p in ("concat", "loop")]
    assert k3[0] != k3[1]  # K passes: different dropout draws, a different run


def test_a_run_logs_and_hashes_only_the_keys_its_task_family_reads(make_cfg):
    mt = _settings(make_cfg, ["experiment=demo"]).to_dict()
    assert "beam" in mt["trainer"] and "teacher" in mt["method"]
    assert "batch_size" not in mt["trainer"] and "optimizer" not in mt["trainer"]
    nlu = _settings(make_cfg, ["experiment=glue_cpu"])
    d = nlu.to_dict()
    assert d["trainer"]["batch_size"] == 16 and d["trainer"]["optimizer"] == "adamax"
    for key in ("beam", "label_smoothing", "max_tokens", "max_len_a", "fused_loss"):
        assert key not in d["trainer"], key
    assert "teacher" not in d["method"] and "rounds" not in d["method"]
    # a translation-only key no longer changes an NLU run's hash
    other = _settings(make_cfg, ["experiment=glue_cpu", "trainer.beam=7"])
    assert other.config_hash() == nlu.config_hash()
    assert other.config_hash(legacy=True) != nlu.config_hash(legacy=True)


def test_runs_of_earlier_versions_are_found_by_their_legacy_hash(make_cfg):
    mt, nlu = _settings(make_cfg, ["experiment=demo"]), _settings(make_cfg, ["experiment=glue_cpu"])
    assert mt.hashes() == [mt.config_hash()]  # translation hashes did not change
    assert nlu.hashes() == [nlu.config_hash(), nlu.config_hash(legacy=True)]
    assert nlu.hashes(cell=True) == [nlu.cell_hash(), nlu.cell_hash(legacy=True)]
    assert len(set(nlu.hashes())) == 2
