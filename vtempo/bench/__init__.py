"""Cost and speed: MAC counts, per-model timing and the decode-to-model pipeline."""
