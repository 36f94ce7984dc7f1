"""Tables of run metrics: the printed values, the three outputs, the paper's numbers."""

from __future__ import annotations

import math

import pytest

from idistill.tables import MISSING, Table, Value, paper_table


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


def test_paper_numbers_are_compared_where_the_paper_file_has_them():
    table = Table(
        "t",
        ["de", "avg"],
        [
            ("baseline", [Value([34.0]), Value([30.0])]),
            ("intra_distill", [Value([37.0]), Value([33.0])]),
        ],
    )
    versus = paper_table("table2", table)
    (label, (ours, paper, diff)), = versus.rows  # fmt: skip
    assert "intra_distill avg (gain" in label and "abstract" in label
    assert ours.mean == pytest.approx(3.0) and paper.mean == pytest.approx(3.54)
    assert diff.mean == pytest.approx(3.0 - 3.54)
    assert paper_table("table3", table) is None  # nothing of Table 3 is in the file
    no_baseline = Table("t", ["avg"], [("intra_distill", [Value([33.0])])])
    (_, (ours, paper, diff)), = paper_table("table2", no_baseline).rows  # fmt: skip
    assert ours.mean is None and paper.mean == 3.54 and diff.mean is None


def test_a_non_finite_metric_counts_as_missing():
    from types import SimpleNamespace

    from idistill.tables import value_of

    def run(run_id, value):
        return SimpleNamespace(
            info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(metrics={"m": value})
        )

    v = value_of([run("a", 0.5), run("b", math.nan), run("c", 0.7)], "m", scale=100)
    assert v.values == [50.0, 70.0] and v.run_ids == ["a", "c"] and v.std is not None
