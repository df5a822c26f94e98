"""Measuring models on data sets: accuracy (`evaluate`) and robustness to action tempo (`robustness`)."""
