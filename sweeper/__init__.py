"""Runs the grid on Ray Tune: spec -> data sets -> one Optuna study per (cell, fold) -> DB."""
