"""Persons → train / validation / test: stratified by label, seeded, never splitting a person.

Written out rather than taken from scikit-learn's `train_test_split`: importing scikit-learn (with scipy)
takes 1–1.5 s, the largest single cost between the command and the first training batch, for a split
of a few hundred IDs. The allocation is the one `StratifiedShuffleSplit` makes (each class gets the
floor or the ceiling of its exact share, the remainder going to the largest fractions), and it is
stratified under the same conditions, so the guarantees tests/test_fuzz.py checks are scikit-learn's.
"""

from __future__ import annotations

import math

import numpy as np

from carotid.errors import UserError


def _count(ratio: float, n: int) -> int:
    return 0 if ratio == 0 else max(1, math.floor(ratio * n + 0.5))


def _allocate(class_sizes: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Persons of each class to take out: floor of the exact share, plus one for the largest remainders
    (ties broken at random), never more than the class has."""
    exact = class_sizes * size / class_sizes.sum()
    taken = np.floor(exact).astype(int)
    left = size - taken.sum()
    remainder = exact - taken
    order = sorted(range(len(class_sizes)), key=lambda k: (-remainder[k], rng.random()))
    for k in order:
        if left == 0:
            break
        if taken[k] < class_sizes[k]:
            taken[k] += 1
            left -= 1
    return taken


def _split_off(ids: list[str], labels: list[int], size: int, seed: int, notes: list[str], what: str):
    """(kept, taken out): `size` persons taken out, stratified by label where every class can be."""
    if size == 0:
        return ids, []
    rng = np.random.default_rng(seed)
    classes, class_sizes = np.unique(labels, return_counts=True)
    if class_sizes.min() < 2:
        reason = "a class has only 1 person"
    elif not len(classes) <= size <= len(ids) - len(classes):
        reason = f"{size} of {len(ids)} persons cannot hold each of {len(classes)} classes on both sides"
    else:
        reason = None
    if reason is not None:
        notes.append(f"{what} split not stratified by label ({reason}); persons were split at random")
        out = set(rng.permutation(len(ids))[:size].tolist())
    else:
        out = set()
        for klass, count in zip(classes, _allocate(class_sizes, size, rng)):
            members = [i for i, label in enumerate(labels) if label == klass]
            out.update(members[j] for j in rng.permutation(len(members))[:count])
    return [p for i, p in enumerate(ids) if i not in out], [p for i, p in enumerate(ids) if i in out]


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
