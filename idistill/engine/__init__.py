"""The one training engine of every task: `fit(recipe, settings, ...)` runs the loop, `step` one
K-pass update; a recipe (idistill.recipes) says what differs per task family."""

from idistill.engine.loop import FitResult, fit
from idistill.engine.recipe import Recipe, TestResult
from idistill.engine.state import Selection, TrainState
from idistill.engine.step import NonFiniteLoss, StepStats, step

__all__ = [
    "FitResult",
    "NonFiniteLoss",
    "Recipe",
    "Selection",
    "StepStats",
    "TestResult",
    "TrainState",
    "fit",
    "step",
]
