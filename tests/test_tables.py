"""Tables of run metrics: the printed values, the three outputs, the paper's number in a cell."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from idistill.tables import HYPOTHESES, MISSING, REFERENCES, Table, Value, add_significance


def test_a_value_prints_mean_std_over_seeds_and_the_significance_mark():
    assert Value([]).text() == MISSING
    assert Value([30.0]).text() == "30.00"
    assert Value([30.0, 32.0], p_value=0.01).text() == "31.00 ± 1.41 (2)*"
    assert Value([30.0], p_value=0.2).text() == "30.00"
    assert Value([1.5e-5, 2.5e-5]).text(".1e") == "2.0e-05 ± 7.1e-06 (2)"


def test_a_table_prints_aligned_text_markdown_and_one_record_per_cell():
    table = Table(
        "T", ["de", "avg"], [("baseline", [Value([34.0], ["r1"]), Value([])])], notes=["n"]
    )
    text = table.terminal().splitlines()
    assert text[0] == "T" and text[1].split() == ["de", "avg"] and text[-1] == "  n"
    assert text[3].split() == ["baseline", "34.00", MISSING]
    assert "| baseline | 34.00 | – |" in table.markdown()
    [de, avg] = table.records()
    assert (de["column"], de["mean"], de["n"], de["run_ids"]) == ("de", 34.0, 1, "r1")
    assert avg["mean"] is None and avg["n"] == 0


def test_a_cell_with_the_papers_number_prints_it_and_the_difference_under_its_row():
    table = Table("T", ["de", "avg"], [("rdrop", [Value([34.0, 35.0], paper=35.43), Value([])])])
    assert [line.split() for line in table.terminal().splitlines()[3:]] == [
        ["rdrop", "34.50", "±", "0.71", "(2)", MISSING],
        ["paper", "35.43", MISSING],
        ["ours", "-", "paper", "-0.93", MISSING],
    ]
    de, avg = table.records()
    assert de["paper"] == 35.43 and de["ours_minus_paper"] == pytest.approx(-0.93)
    assert avg["paper"] is None and avg["ours_minus_paper"] is None
    plain = Table("T", ["de"], [("rdrop", [Value([34.0])])])
    assert len(plain.terminal().splitlines()) == 4  # no paper: no extra lines


def test_a_non_finite_metric_counts_as_missing():
    from types import SimpleNamespace

    from idistill.tables import value_of

    def run(run_id, value):
        return SimpleNamespace(
            info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(metrics={"m": value})
        )

    v = value_of([run("a", 0.5), run("b", math.nan), run("c", 0.7)], "m", scale=100)
    assert v.values == [50.0, 70.0] and v.run_ids == ["a", "c"] and v.std is not None


def _run(seed: int, hyp: list[str], ref: list[str]):
    """A finished run as the report sees it: its seed param and its test files."""
    return SimpleNamespace(
        data=SimpleNamespace(params={"seed": str(seed)}), files={HYPOTHESES: hyp, REFERENCES: ref}
    )


def test_each_seed_pair_is_bootstrapped_in_bleu_and_chrf_and_the_star_needs_all_of_them():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    ref = [" ".join(rng.choices(words, k=12)) for _ in range(60)]
    noisy = [" ".join(rng.choices(words, k=12)) for _ in range(60)]
    half = ref[:30] + noisy[30:]
    baseline = [_run(1, noisy, ref), _run(2, half, ref)]
    near = noisy[:1] + ref[1:31] + noisy[31:]  # two sentences differ from `half`
    # seed 1: far better than its baseline; seed 2: about as good; seed 3: no baseline
    intra = [_run(3, ref, ref), _run(2, near, ref), _run(1, ref, ref)]
    metrics = [(None, "test/bleu"), (None, "test/chrf"), (None, "best/valid/loss")]
    rows = {"baseline": {None: SimpleNamespace(runs=baseline)},
            "intra": {None: SimpleNamespace(runs=intra)}}  # fmt: skip
    table = Table("T", ["BLEU", "chrF2", "loss"], [
        (name, [Value([1.0]) for _ in metrics]) for name in rows
    ])  # fmt: skip
    add_significance(table, rows, metrics, 200, lambda run, name: run.files.get(name))

    base, (bleu, chrf, loss) = (values for _, values in table.rows)
    assert all(v.p_value is None and not v.p_values for v in base)
    for v in (bleu, chrf):
        assert list(v.p_values) == ["1", "2"]  # the seeds both rows have, in order
        assert v.p_values["1"] < 0.05 < v.p_values["2"]
        assert v.p_value == v.p_values["2"]  # the largest: not every seed pair is significant
        assert not v.text().endswith("*")
        # both seeds' test sets concatenated: seed 1's large gain carries the pooled test
        assert v.p_pooled is not None and v.p_pooled < 0.05 < v.p_values["2"]
    assert loss.p_value is None and not loss.p_values  # no bootstrap of a validation loss
    assert "intra, chrF2 p: seed 1 " in "\n".join(table.notes)
    assert "; the 2 seeds pooled " in "\n".join(table.notes)
    assert table.records()[4]["p_by_seed"].startswith("1:")
    assert table.records()[4]["p_pooled"] == bleu.p_pooled


def test_one_seed_pair_has_no_pooled_test():
    rng = random.Random(1)
    ref = [" ".join(rng.choices("abcdefgh", k=8)) for _ in range(20)]
    other = [" ".join(rng.choices("abcdefgh", k=8)) for _ in range(20)]
    intra = [_run(1, ref, ref), _run(2, ref, ref)]  # seed 2 has no baseline
    rows = {"baseline": {None: SimpleNamespace(runs=[_run(1, other, ref)])},
            "intra": {None: SimpleNamespace(runs=intra)}}  # fmt: skip
    table = Table("T", ["BLEU"], [(name, [Value([1.0])]) for name in rows])
    add_significance(table, rows, [(None, "test/bleu")], 50, lambda run, name: run.files.get(name))
    bleu = table.rows[1][1][0]
    assert list(bleu.p_values) == ["1"] and bleu.p_pooled is None
    assert "pooled" not in "\n".join(table.notes)


def test_a_run_without_its_test_files_is_named_and_not_tested():
    ref = ["a b c d", "e f g h"]
    rows = {"baseline": {None: SimpleNamespace(runs=[_run(1, ref, ref)])},
            "intra": {None: SimpleNamespace(runs=[_run(1, ref, ref)])}}  # fmt: skip
    table = Table("T", ["BLEU"], [(name, [Value([1.0])]) for name in rows])
    add_significance(table, rows, [(None, "test/bleu")], 50, lambda run, name: None)
    assert table.rows[1][1][0].p_value is None
    assert any("no significance test for intra (seed 1)" in n for n in table.notes)
