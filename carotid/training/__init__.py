"""One training run: `runtime` (Accelerator, precision, signals, log), `run_dir` (the run folder and its
provenance), `checkpoints` (resumable state), `optim` (AdamW and LR schedules), `engine` (one epoch, one
prediction pass) and `trainer` (the epoch loop, best and final model)."""
