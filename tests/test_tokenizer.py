import pytest
import sentencepiece as spm

from idistill.data.synthetic import make_corpus
from idistill.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    train_sentencepiece,
)


def _pieces(model_file):
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


@pytest.fixture(scope="module")
def texts():
    pairs = make_corpus(3, 300, 0, 20)
    return [side for pair in pairs["train"] for side in pair], pairs["test"]


@pytest.fixture(scope="module")
def model_file(texts, tmp_path_factory):
    return train_sentencepiece(texts[0], tmp_path_factory.mktemp("spm") / "spm", 300)


def test_train_returns_the_model_file(model_file):
    assert model_file.name == "spm.model" and model_file.is_file()


def test_special_ids_are_pad_unk_bos_eos(model_file):
    tok = Tokenizer(model_file)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)


def test_decode_inverts_encode_on_unseen_sentences(model_file, texts):
    tok = Tokenizer(model_file)
    for src, tgt in texts[1]:
        for text in (src, tgt):
            ids = tok.encode(text)
            assert all(4 <= i < tok.vocab_size for i in ids)
            assert tok.decode(ids) == text


def test_decode_skips_pad_bos_and_eos(model_file, texts):
    tok = Tokenizer(model_file)
    text = texts[1][0][1]
    ids = tok.encode(text)
    assert tok.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == text


def test_encode_batch_matches_encode(model_file, texts):
    tok = Tokenizer(model_file)
    batch = [t for pair in texts[1] for t in pair]
    assert tok.encode_batch(batch) == [tok.encode(t) for t in batch]


def test_vocab_size_is_an_upper_bound_on_a_tiny_corpus(tmp_path):
    model = train_sentencepiece(["a tiny corpus .", "of two lines ."], tmp_path / "m", 5000)
    assert 4 < Tokenizer(model).vocab_size < 5000


def test_training_is_deterministic_and_quiet(texts, model_file, tmp_path, capfd):
    again = train_sentencepiece(texts[0], tmp_path / "spm", 300)
    assert _pieces(again) == _pieces(model_file)  # the file also holds its own path
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_missing_model_file_raises_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer(tmp_path / "nope.model")


def test_input_sentence_size_trains_on_a_seeded_sample(texts, model_file, tmp_path):
    a = train_sentencepiece(texts[0], tmp_path / "a", 300, input_sentence_size=101)
    b = train_sentencepiece(texts[0], tmp_path / "b", 300, input_sentence_size=101)
    assert _pieces(a) == _pieces(b) != _pieces(model_file)


def test_input_sentence_size_below_sentencepiece_floor_names_the_setting(texts, tmp_path):
    with pytest.raises(ValueError, match=r"task.spm_max_sentences must be > 100 or null \(got 5\)"):
        train_sentencepiece(texts[0], tmp_path / "m", 300, input_sentence_size=5)
