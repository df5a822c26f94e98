"""Model weights and what describes them: the registry (`checkpoints.yaml`), checkpoint files in every
supported layout, and the cache that downloads, verifies and imports them. Bundled demo checkpoints
live in `bundled/`, class-name lists in `labels/`. What is read from elsewhere (downloads, registry
files, checkpoint metadata) is bounded by `limits` and checked by `metadata`."""
