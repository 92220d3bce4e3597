"""Persons → train / validation / test, or → K cross-validation folds: stratified by label, seeded, never
splitting a person, and with `groups` (a sheet column) never splitting a group of persons either.

Without groups the plain split keeps its exact person counts and is written out here rather than taken
from scikit-learn's `train_test_split`: importing scikit-learn (with scipy) takes 1-1.5 s, the largest
single cost between the command and the first training batch, for a split of a few hundred IDs. The
allocation is the one `StratifiedShuffleSplit` makes (each class gets the floor or the ceiling of its exact
share, the remainder going to the largest fractions), stratified under the same conditions, so the
guarantees tests/test_fuzz.py checks are scikit-learn's. With groups every split and fold comes from
scikit-learn's `StratifiedGroupKFold`, which keeps groups whole while balancing labels.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np

from carotid.core.errors import UserError


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


def _group_folds(
    ids: list[str],
    labels: list[int],
    groups: list[str],
    k: int,
    seed: int,
    notes: list[str],
    what: str,
    class_names: list[str] | None = None,
):
    """The K folds (lists of person IDs) of StratifiedGroupKFold; what its warnings say, said in our words."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(set(groups))
    if n_groups < k:
        raise UserError(
            f"{what}: {n_groups} group(s) of persons are too few for {k} folds",
            "add persons, or lower --folds / the split ratios",
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(ids, labels, groups)
            held_out = [sorted(ids[i] for i in test) for _, test in folds]
        except ValueError:  # every class has fewer persons than folds: stratifying is impossible
            notes.append(
                f"{what}: every class has fewer persons (or groups of persons) than the {k} folds: the folds are not "
                "stratified by label and some lack a class"
            )
            from sklearn.model_selection import GroupKFold

            held_out = [sorted(ids[i] for i in test) for _, test in GroupKFold(n_splits=k).split(ids, labels, groups)]
    if caught:  # scikit-learn's "least populated class" warning, said with the classes and what it means
        notes += _few_per_class(labels, groups, k, what, class_names)
    if any(not fold for fold in held_out):
        raise UserError(f"{what}: a fold came out empty", "add persons, or lower --folds")
    return held_out


def _few_per_class(labels: list[int], groups: list[str], k: int, what: str, names: list[str] | None) -> list[str]:
    units = {label: len({g for lab, g in zip(labels, groups) if lab == label}) for label in set(labels)}
    few = sorted((n, label) for label, n in units.items() if n < k)
    if not few:
        return []
    if what != "cross-validation" or names is None:
        return [
            f"{what} split: {len(few)} class(es) have fewer persons (or groups of persons) than the {k} group folds "
            "it is drawn from: the split may hold none of them"
        ]
    shown = ", ".join(f"'{names[label]}' ({n})" for n, label in few)
    fewest = few[0][0]
    return [
        f"{what}: {k} folds, but fewer persons (or groups of persons) than folds in class {shown}: {k - fewest} "
        "fold(s) hold none of that class, so their AUC, sensitivity or specificity cannot be computed and the "
        f"mean over folds counts only the folds that have them — add persons of that class, or use --folds "
        f"{max(fewest, 2)}"
    ]


def _split_off_groups(
    ids: list[str], labels: list[int], groups: list[str], share: float, seed: int, notes: list[str], what: str
):
    """About `share` of the persons, as whole groups: the first of round(1/share) stratified group folds.

    StratifiedGroupKFold has no test_size; one fold of k is the library's way to hold out ~1/k of the persons
    with labels balanced and groups whole. The share met is reported, since it is only near the one asked."""
    if share == 0:
        return ids, []
    if len(set(groups)) < 2:
        raise UserError(
            f"the {len(ids)} persons form one group (persons sharing frame files, or one --group-column value): "
            f"none is left for the {what} split",
            "check the folders named in the warning above (the same frames under several IDs), or set the ratio 0",
        )
    k = min(max(2, round(1 / share)), len(set(groups)))
    out = _group_folds(ids, labels, groups, k, seed, notes, what)[0]
    taken = set(out)
    notes.append(
        f"{what} split: whole groups, 1 of {k} label-stratified group folds: {len(out)} of {len(ids)} persons "
        f"({len(out) / len(ids):.0%}; asked {share:.0%})"
    )
    return [p for p in ids if p not in taken], out


def person_groups(
    persons: list[str], sheet_groups: dict[str, str] | None, shared: list[dict] = ()
) -> dict[str, str] | None:
    """Person → group key (a person without a group cell is a group of its own); None without a group column
    and without `shared` (data_report.json "persons_sharing_files": persons holding the same frame files,
    who are one group, merged with their sheet groups, so that they never land in two splits)."""
    if sheet_groups is None and not shared:
        return None
    # The prefixes keep a group named like a person apart from that person's own group.
    groups = {p: f"group:{sheet_groups[p]}" if sheet_groups and p in sheet_groups else f"person:{p}" for p in persons}
    for link in shared:
        keys = {groups[p] for p in link["persons"] if p in groups}
        merged = min(keys, default=None)
        for p, key in groups.items():
            if key in keys:
                groups[p] = merged
    return groups


def describe_groups(groups: dict[str, str], column: str | None) -> str:
    sizes = Counter(groups.values())
    shared = sum(n for n in sizes.values() if n > 1)
    source = f"column '{column}'" if column else "persons sharing frame files"
    return (
        f"groups from {source}: {len(sizes)} group(s) for {len(groups)} persons; {shared} persons share "
        f"a group with others (largest group: {max(sizes.values())} persons); each group stays in one split"
    )


def split_persons(
    person_labels: dict[str, int],
    train_ratio: float,
    val_ratio: float,
    test_ratio: float,
    seed: int,
    groups: dict[str, str] | None = None,
) -> tuple[dict[str, list[str]], list[str]]:
    """Person-level split, stratified by label where every class has enough persons.

    Returns ({"train", "val", "test": sorted person IDs}, notes about stratification and groups)."""
    ids = sorted(person_labels)
    n = len(ids)
    n_test, n_val = _count(test_ratio, n), _count(val_ratio, n)
    if n - n_test - n_val < 1:
        raise UserError(
            f"{n} person(s) are too few for train/val/test ratios {train_ratio}/{val_ratio}/{test_ratio}",
            "add persons, or set --val-ratio / --test-ratio to 0",
        )
    notes: list[str] = []
    if groups is None:
        rest, test = _split_off(ids, [person_labels[p] for p in ids], n_test, seed, notes, "test")
        train, val = _split_off(rest, [person_labels[p] for p in rest], n_val, seed, notes, "validation")
    else:
        rest, test = _split_off_groups(
            ids, [person_labels[p] for p in ids], [groups[p] for p in ids], test_ratio, seed, notes, "test"
        )
        train, val = split_train_val(rest, person_labels, train_ratio, val_ratio, seed, groups, notes)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}, notes


def split_train_val(
    persons: list[str],
    person_labels: dict[str, int],
    train_ratio: float,
    val_ratio: float,
    seed: int,
    groups: dict[str, str] | None,
    notes: list[str],
) -> tuple[list[str], list[str]]:
    """Training persons → (train, val), the validation share being val / (train + val) of them."""
    share = val_ratio / (train_ratio + val_ratio)
    labels = [person_labels[p] for p in persons]
    if groups is None:
        size = _count(share, len(persons))
        if len(persons) - size < 1:
            raise UserError(
                f"{len(persons)} training person(s) are too few to also hold out validation persons",
                "add persons, or set --val-ratio 0",
            )
        return _split_off(persons, labels, size, seed, notes, "validation")
    if share and len({groups[p] for p in persons}) < 2:
        raise UserError(
            f"the {len(persons)} training person(s) form one group: none is left for validation",
            "add persons, or set --val-ratio 0",
        )
    return _split_off_groups(persons, labels, [groups[p] for p in persons], share, seed, notes, "validation")


def cv_splits(
    person_labels: dict[str, int],
    folds: int,
    train_ratio: float,
    val_ratio: float,
    test_ratio: float,
    seed: int,
    groups: dict[str, str] | None = None,
    class_names: list[str] | None = None,
) -> tuple[dict, list[str]]:
    """Cross-validation plan: the test persons held out first, the rest in `folds` label-stratified folds
    (StratifiedGroupKFold; each person, or group, its own unit without groups), and inside each fold's
    training persons the validation persons that pick the best epoch and the threshold.

    Returns ({"test": [...], "folds": [{"fold", "held_out", "train", "val"}, ...]}, notes)."""
    ids = sorted(person_labels)
    notes: list[str] = []
    labels = [person_labels[p] for p in ids]
    if groups is None:
        rest, test = _split_off(ids, labels, _count(test_ratio, len(ids)), seed, notes, "test")
    else:
        rest, test = _split_off_groups(ids, labels, [groups[p] for p in ids], test_ratio, seed, notes, "test")
    rest = sorted(rest)
    units = [groups[p] for p in rest] if groups is not None else rest
    rest_labels = [person_labels[p] for p in rest]
    held_out = _group_folds(rest, rest_labels, units, folds, seed, notes, "cross-validation", class_names)
    plan = []
    for k, fold in enumerate(held_out, start=1):
        taken = set(fold)
        pool = [p for p in rest if p not in taken]
        fold_notes: list[str] = []
        train, val = split_train_val(pool, person_labels, train_ratio, val_ratio, seed, groups, fold_notes)
        notes += [f"fold {k}: {note}" for note in fold_notes]
        plan.append({"fold": k, "held_out": fold, "train": sorted(train), "val": sorted(val)})
    return {"test": sorted(test), "folds": plan}, notes
