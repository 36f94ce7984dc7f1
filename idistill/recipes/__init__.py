"""Task recipes: what each task family plugs into the engine (`idistill.engine.fit`)."""

from __future__ import annotations

from idistill.config import RunSettings
from idistill.engine.recipe import Recipe


def recipe_for(settings: RunSettings) -> Recipe:
    """Translation (seq2seq transformer, beam search + sacreBLEU) or NLU fine-tuning (a
    pretrained encoder and a head: GLUE, NER, TyDiQA), by task.type."""
    if settings.task.get("type") == "nlu":
        from idistill.recipes.nlu import NLURecipe

        return NLURecipe(settings)
    from idistill.recipes.translation import TranslationRecipe

    return TranslationRecipe(settings)


def check_settings(settings: RunSettings) -> None:
    """Refuse what the task family's recipe cannot train (config.validate calls this)."""
    if settings.task.get("type") == "nlu":
        from idistill.recipes.nlu import check_settings as check
    else:
        from idistill.recipes.translation import check_settings as check
    check(settings)


def check_data(settings: RunSettings) -> None:
    """Refuse data the task family's recipe could not train, validate or test on (the preflight
    calls this); loads the data, which the recipe then takes over."""
    if settings.task.get("type") == "nlu":
        from idistill.recipes.nlu import check_data as check
    else:
        from idistill.recipes.translation import check_data as check
    check(settings)
