"""Persons → train / validation / test: stratified by label, seeded, never splitting a person."""

from __future__ import annotations

import math

from carotid.errors import UserError


def _count(ratio: float, n: int) -> int:
    return 0 if ratio == 0 else max(1, math.floor(ratio * n + 0.5))


def _split_off(ids: list[str], labels: list[int], size: int, seed: int, notes: list[str], what: str):
    from sklearn.model_selection import train_test_split  # ~1 s to import: only when a split is made

    if size == 0:
        return ids, []
    try:
        keep, out = train_test_split(ids, test_size=size, stratify=labels, random_state=seed)
    except ValueError as err:
        notes.append(f"{what} split not stratified by label ({err}); persons were split at random")
        keep, out = train_test_split(ids, test_size=size, random_state=seed)
    return keep, out


def split_persons(
    person_labels: dict[str, int], train_ratio: float, val_ratio: float, test_ratio: float, seed: int
) -> tuple[dict[str, list[str]], list[str]]:
    """Person-level split, stratified by label where every class has enough persons.

    Returns ({"train", "val", "test": sorted person IDs}, notes about stratification)."""
    ids = sorted(person_labels)
    n = len(ids)
    n_test, n_val = _count(test_ratio, n), _count(val_ratio, n)
    if n - n_test - n_val < 1:
        raise UserError(
            f"{n} person(s) are too few for train/val/test ratios {train_ratio}/{val_ratio}/{test_ratio}",
            "add persons, or set --val-ratio / --test-ratio to 0",
        )
    notes: list[str] = []
    rest, test = _split_off(ids, [person_labels[p] for p in ids], n_test, seed, notes, "test")
    train, val = _split_off(rest, [person_labels[p] for p in rest], n_val, seed, notes, "validation")
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}, notes
