"""Tables of run metrics: the printed values, the three outputs, the paper's number in a cell."""

from __future__ import annotations

import math

import pytest

from idistill.tables import MISSING, Table, Value


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
