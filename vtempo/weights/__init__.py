"""Model weights and what describes them: the registry (`checkpoints.yaml`), checkpoint files in every
supported layout, and the cache that downloads, verifies and imports them. Bundled demo checkpoints
live in `bundled/`, class-name lists in `labels/`."""
