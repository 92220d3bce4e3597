"""From the label sheet and the person folders to batches of frames, in rooms by concern.

`sheet` reads the label sheet (`labels` is its entry point), `folders` finds each person's frame files and
checks the folders (`discovery`, `matching`, `audit`, `readable` proves frames readable), `frames` turns a
file into model input (`kinds` per file kind, `decode`, `preprocessing`, `transforms`), `cache` keeps decoded
frames. Shared here: `classes` (what a label cell means), `manifest` (sheet rows matched with person folders,
the run's view of its data), `split` (persons to splits), `loaders` and `bags` (datasets and batches), `demo`.
The rooms' order is an import-linter contract in pyproject.toml.
"""
