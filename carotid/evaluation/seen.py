"""Persons a model has seen: those of --input or of an external evaluation that are in the training or
validation split of the model's own run (the model file in RUN/models/, RUN/splits.json beside it)."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from carotid.core.run_dir import RunDir
from carotid.core.text import plural


def seen_persons(model_path: str | Path, persons: Sequence[str]) -> dict | None:
    """{"count", "of", "splits", "first", "splits_file"} of the `persons` in the model run's train or val split;
    None when none is, or the model file is not in a run folder."""
    models = Path(model_path).resolve().parent
    run = RunDir(models.parent)
    if models.name != "models" or not run.splits.is_file():
        return None
    try:
        splits = json.loads(run.splits.read_text(encoding="utf-8"))
        seen = {str(p): s for s in ("train", "val") for p in splits.get(s, [])}
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    ids = {unicodedata.normalize("NFC", p).strip(): p for p in persons}
    hit = sorted(ids[p] for p in ids if p in seen)
    if not hit:
        return None
    which = sorted({seen[unicodedata.normalize("NFC", p).strip()] for p in hit})
    return {"count": len(hit), "of": len(persons), "splits": which, "first": hit[:5], "splits_file": str(run.splits)}


def seen_warning(seen: dict, where: str) -> str:
    return (
        f"{plural(seen['count'], 'person')} of {seen['of']} in {where} ({', '.join(map(repr, seen['first']))}) are "
        f"in the model's own {' and '.join(seen['splits'])} split ({seen['splits_file']}): the model has seen "
        "them, so their predictions are no test of it"
    )
