"""Analyses of a trained model (paper sections 2 and 5): parameter sensitivity, pruning curves
and the plots of the paper's figures. Plain functions of a model, batches and a loss; no Hydra,
no MLflow."""
