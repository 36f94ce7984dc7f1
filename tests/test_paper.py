"""The paper's numbers (idistill/paper.yaml) in the report: every number of its Tables 1-5, 7
and 8 that a report prints, under the names the report prints, beside ours with the difference."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from idistill.cli.compose import compose
from idistill.paper import add_paper_numbers, paper_blocks
from idistill.tables import MISSING, Table, Value
from idistill.targets import GLUE_COLUMNS, TARGETS

TABLES = Path(__file__).resolve().parents[2] / "shared" / "paper" / "tables.yaml"
LANGS = ["ar", "de", "es", "fa", "he", "it", "nl", "pl"]
METHODS = {p.stem for p in Path(__file__).resolve().parents[1].glob("conf/method/*.yaml")}
GLUE = {  # tables.yaml's Table 4 column -> the report's header
    "qnli": "QNLI acc", "mnli_m": "MNLI-m", "mnli_mm": "MNLI-mm", "cola": "CoLA mcc",
    "qqp": "QQP F1", "stsb": "STS-B pearson", "rte": "RTE acc", "sst2": "SST-2 acc",
    "mrpc": "MRPC F1", "avg": "avg",
}  # fmt: skip


def _paper_cells(target: str, table: int) -> dict[str, dict[str, float]]:
    """The cells of paper.yaml's block for `target` that quotes the paper's Table `table`."""
    [block] = [b for b in paper_blocks(target) if b["source"].startswith(f"Table {table} ")]
    return block["cells"]


def _expected(tables: dict) -> list[tuple[str, int, str, str, float]]:
    """(report target, paper table, report row, report column, number) for every number of
    tables.yaml that a report prints: not the parameter counts, nor Tables 7-8's averages."""
    out = []
    for row, cols in tables["table1"]["rows"].items():
        out.append(("table1", 1, "round 0" if row == "transformer" else f"round {row[-1]}",
                    "BLEU", cols["de"]))  # fmt: skip
    for n, target, rename in ((2, "table2", None), (3, "table3", "BLEU"), (4, "table4", GLUE)):
        for row, cols in tables[target]["rows"].items():
            row = "baseline" if row == "transformer" else row
            for col, value in cols.items():
                if col != "params":
                    col = rename.get(col) if isinstance(rename, dict) else rename or col
                    out.append((target, n, row, col, value))
    for row, cols in tables["table5"]["rows"].items():
        out.append(("table5", 5, row, "test avg F1", cols["ner"]))
        out.append(("table5_tydiqa", 5, row, "test avg F1", cols["tydiqa"]))
    for n, target in ((7, "table5"), (8, "table5_tydiqa")):
        for row, cols in tables[f"table{n}"].items():
            out += [(target, n, row, lang, v) for lang, v in cols.items() if lang != "avg"]
    return out


@pytest.mark.skipif(not TABLES.is_file(), reason="needs ../shared/paper/tables.yaml")
def test_every_number_of_the_papers_tables_that_a_report_prints_is_in_the_package_data():
    expected = _expected(yaml.safe_load(TABLES.read_text(encoding="utf-8")))
    assert len(expected) == 3 + 54 + 5 + 40 + 4 + 96 + 18
    for target, table, row, col, value in expected:
        assert _paper_cells(target, table)[row][col] == pytest.approx(value), (target, row, col)


@pytest.mark.parametrize("name", ["table1", "table2", "table3", "table4", "table5", "fig8"])
def test_the_paper_data_names_rows_and_columns_as_the_report_prints_them(name):
    target = TARGETS[name]
    cfg = compose([f"experiment={target.experiment}"], hydra=True)
    sweep = cfg.hydra.sweeper.params or {}
    if name == "table1":
        rows = {f"round {r}" for r in range(cfg.method.rounds + 1)}
    elif name == "fig8":
        rows = set(sweep["method.k"].split(","))
    else:
        rows = METHODS
    cols = {"lang": sweep.get("lang", "").split(","), "glue_task": list(GLUE_COLUMNS)}
    headers = {"avg"} if target.average else set()
    for col in cols.get(target.cols, [None]):
        headers |= {h.format(col=col) for h, _ in target.columns(col)}
    for block in paper_blocks(name):
        for row, by_col in (block.get("cells") or {}).items():
            assert row in rows, (block["source"], row)
            if not block["source"].startswith(("Table 7", "Table 8")):  # any language evaluated
                assert set(by_col) <= headers, (block["source"], set(by_col) - headers)
        for gain in block.get("gains") or []:
            assert {str(gain["row"]), str(gain["over"])} <= rows and gain["column"] in headers


def _table2(langs: list[str], baseline: float, intra: float) -> Table:
    avg = [Value([baseline]), Value([intra])]
    rows = [(n, [Value([v]) for _ in langs] + [a]) for n, v, a in
            (("baseline", baseline, avg[0]), ("intra_distill", intra, avg[1]))]  # fmt: skip
    return Table("Table 2", [*langs, "avg"], rows)


def test_a_cell_prints_the_papers_number_and_ours_minus_paper_under_its_row():
    table = _table2(LANGS, 30.0, 34.5)
    gains = add_paper_numbers("table2", [table])
    rows = dict(table.rows)
    de, avg = rows["intra_distill"][1], rows["intra_distill"][-1]
    assert (de.paper, avg.paper) == (36.10, 34.00)
    assert de.vs_paper == pytest.approx(34.5 - 36.10)
    text = table.terminal().splitlines()
    at = next(i for i, line in enumerate(text) if line.startswith("intra_distill"))
    assert text[at + 1].split() == ["paper", "33.42", "36.10", "41.82", "23.78", "39.31",
                                    "35.43", "38.53", "23.61", "34.00"]  # fmt: skip
    assert text[at + 2].split()[:4] == ["ours", "-", "paper", "+1.08"]  # 34.50 - 33.42
    assert any(n.startswith("paper: Table 2") for n in table.notes)
    record = next(r for r in table.records() if r["row"] == "baseline" and r["column"] == "avg")
    assert record["paper"] == 30.46 and record["ours_minus_paper"] == pytest.approx(30.0 - 30.46)
    assert "|   paper | 28.62 |" in table.markdown()
    labels = [label for label, _ in gains.rows]
    assert labels[0].startswith("intra_distill - baseline, avg (paper: abstract")
    ours, paper, diff = gains.rows[0][1]
    assert ours.mean == pytest.approx(4.5) and paper.mean == 3.54
    assert diff.mean == pytest.approx(4.5 - 3.54)


def test_an_average_over_fewer_columns_than_the_papers_is_not_compared():
    table = _table2(["de"], 33.0, 36.0)
    gains = add_paper_numbers("table2", [table])
    de, avg = dict(table.rows)["baseline"]
    assert de.paper == 33.07 and avg.paper is None
    ours, paper, diff = gains.rows[0][1]
    assert not ours.values and paper.mean == 3.54 and not diff.values
    assert gains.terminal().splitlines()[3].split()[-3:] == [MISSING, "3.54", MISSING]


def test_per_language_tables_get_tables_7_and_8_and_rows_without_numbers_print_none():
    per_lang = Table("NER per language", ["de", "en", "jv"], [
        ("baseline", [Value([70.0]), Value([80.0]), Value([50.0])]),
        ("rdrop", [Value([70.0]), Value([80.0]), Value([50.0])]),
    ])  # fmt: skip
    add_paper_numbers("table5", [Table("NER", ["test avg F1"], []), per_lang])
    de, en, jv = dict(per_lang.rows)["baseline"]
    assert (de.paper, en.paper, jv.paper) == (78.78, 84.50, None)  # jv: not in Table 7
    assert [line.split()[0] for line in per_lang.terminal().splitlines()[3:6]] == [
        "baseline", "paper", "ours"
    ]  # fmt: skip
    assert per_lang.terminal().splitlines()[6].startswith("rdrop")  # nothing of the paper
    assert add_paper_numbers("multi30k", [per_lang]) is None
