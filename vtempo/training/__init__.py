"""Training models, from scratch or from a checkpoint, and retraining the bundled demo models."""
