"""Overrides that name no key or option are refused with the nearest one, before Hydra starts."""

from __future__ import annotations

import pytest

from idistill.cli.overrides import override_problems

TASKS = "glue, iwslt14, multi30k, ner, parallel_text, synthetic, tydiqa, wmt17"


@pytest.mark.parametrize(
    ("overrides", "problems"),
    [
        (["metod.alpha=1"], ["unknown key metod.alpha (did you mean method.alpha?)"]),
        (["method.alph=1"], ["unknown key method.alph (did you mean method.alpha?)"]),
        (["task=iwslt"], [f"no task named 'iwslt' (did you mean task=iwslt14? options: {TASKS})"]),
        (
            ["method=baseline,intra_distil"],  # each value of a sweep is checked
            [
                "no method named 'intra_distil' (did you mean method=intra_distill? options: "
                "baseline, intra_distill, intra_distill_constant, intra_distill_js, "
                "intra_distill_multi30k, rdrop, sage, self_distill, switch)"
            ],
        ),
        (["task=nope"], [f"no task named 'nope' (options: {TASKS})"]),
        (  # all at once; a key of the task meant is not judged by another task's keys
            ["task=iwslt", "task.source=x", "metod.alpha=1"],
            [
                f"no task named 'iwslt' (did you mean task=iwslt14? options: {TASKS})",
                "unknown key metod.alpha (did you mean method.alpha?)",
            ],
        ),
        (
            ["trainer.lrr=1", "zz=1"],
            [
                "unknown key trainer.lrr (did you mean trainer.lr?)",
                "unknown key zz (the top level has: analysis, data_dir, divergence, glue_task, "
                "lang, method, model, schedule, seed, task, tracking, trainer)",
            ],
        ),
    ],
)
def test_near_misses_are_named_with_the_fix(overrides, problems):
    assert override_problems(overrides) == problems


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=demo", "task.n_train=300"],  # a key of the group the experiment picks
        ["experiment=glue_cpu", "glue_task=rte", "task.max_train_examples=3"],
        ["+extra=1", "~trainer.clip_norm", "hydra.run.dir=x", "hydra/launcher=joblib"],
        ["method.k=range(1,4)", "method.alpha=1,5", "seed=1,2,3"],
        ["method.k=(", "task=glob(*)"],  # Hydra's to parse and to expand
    ],
)
def test_overrides_hydra_accepts_pass(overrides):
    assert override_problems(overrides) == []
