"""A federated site's own folder: its persons, split and data report, made once and read back every round.

The folder is an ordinary carotid run directory (config.yaml, splits.json, data_report.json, train.log) named
after the federated run, under the site's own output directory; it stays at the site. Only `SiteSummary`
(class names and counts) is meant to leave it, and a site's error only as `hide_private` leaves it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

from accelerate import Accelerator

from carotid.core import run_dir as run_folder
from carotid.core.errors import UserError
from carotid.core.run_dir import RunDir
from carotid.core.runtime import build_accelerator, on_main
from carotid.data.classes import cell_text
from carotid.data.manifest import SPLITS, DataManifest, check_classes_in_training
from carotid.data.sheet.workbook import read_sheet
from carotid.data.split import describe_groups, person_groups, split_persons
from carotid.training.config import TrainConfig
from carotid.training.fit import read_data, with_splits

# The options a site decides for itself (its sheet, its folders, its machine); every other option is the
# coordinator's, the same at every site.
SITE_OPTIONS = (
    "root_dir",
    "label_excel",
    "sheet",
    "header_row",
    "id_column",
    "label_column",
    "group_column",
    "strict_matching",
    "max_imgs_per_person",
    "cache",
    "cache_dir",
    "num_workers",
    "output_dir",
)
# How many processes (GPUs) of its own machine a site trains on: its machine's setting, not a carotid.train option.
PROCESSES = "processes"
PRIVATE = "[private]"  # what a site's error shows the coordinator instead of a word that may name a person


@dataclass(frozen=True)
class SiteSummary:
    """What the coordinator learns of a site before round 1: no ID, path or per-person row."""

    class_names: list[str]
    positive_class: str | None
    persons: dict[str, list[int]]  # split → persons per class, in class_names order
    frames: dict[str, int]  # split → frames

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_site_settings(site: Mapping[str, object]) -> None:
    """A site's settings name only SITE_OPTIONS and PROCESSES; anything else is the coordinator's and refused."""
    unknown = sorted(set(site) - {*SITE_OPTIONS, PROCESSES})
    if unknown:
        raise UserError(
            f"site options {unknown} are not a site's to set",
            f"a site sets only {', '.join(SITE_OPTIONS)} and {PROCESSES}",
        )
    site_processes(site)


def site_processes(site: Mapping[str, object]) -> int:
    """The site's processes (1 unless set): a whole number ≥ 1, else a UserError."""
    value = site.get(PROCESSES, 1)
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1 or isinstance(value, float) or isinstance(value, bool):
        raise UserError(f"a site's {PROCESSES} must be a whole number ≥ 1, not {value!r}", f"e.g. {PROCESSES}=2")
    return number


def site_options(cfg: TrainConfig, site: dict) -> TrainConfig:
    """The coordinator's options with this site's own (SITE_OPTIONS) put in; anything else is refused."""
    check_site_settings(site)
    own = {k: v for k, v in site.items() if k != PROCESSES}
    # The coordinator's starting weights arrive with every round: a site never loads weights of its own.
    return dataclasses.replace(cfg, **own, pretrained=False, pretrained_weights=None, load_model=None, resume=None)


def site_run_dir(cfg: TrainConfig, run_name: str) -> Path:
    return Path(cfg.output_dir) / run_name


def open_site(accelerator: Accelerator, cfg: TrainConfig, run_name: str) -> tuple[DataManifest, Path]:
    """(the site's manifest with its split, its run folder OUTPUT_DIR/RUN_NAME): the split is made (as
    carotid.train makes it) when the folder does not exist yet, else read back, so every round of the run trains
    and validates on the same persons."""
    run_dir = site_run_dir(cfg, run_name)
    manifest = on_main(accelerator, lambda: _read_or_split(cfg, run_dir, run_name))
    check_classes_in_training(manifest)
    return manifest, run_dir


def _read_or_split(cfg: TrainConfig, run_dir: Path, run_name: str) -> DataManifest:
    if RunDir(run_dir).is_run():
        splits = run_folder.read_splits(run_dir)
        trained = run_folder.read_run_config(run_dir).get("class_names")
        manifest, _, _, _ = read_data(cfg, [p for s in SPLITS for p in splits[s]], trained)
        return with_splits(manifest, splits, [])
    manifest, table, _, label_excel = read_data(cfg)
    groups = person_groups(sorted(manifest.person_labels), table.groups, manifest.report["persons_sharing_files"])
    splits, notes = split_persons(
        manifest.person_labels, cfg.train_ratio, cfg.val_ratio, cfg.test_ratio, cfg.seed, groups
    )
    if groups is not None:
        notes.insert(0, describe_groups(groups, cfg.group_column))
    manifest = with_splits(manifest, splits, notes)
    check_classes_in_training(manifest)  # before the folder exists: a failed site leaves nothing behind
    run_folder.create_run_dir(
        cfg.output_dir,
        dataclasses.asdict(cfg),
        label_excel,
        manifest.class_names,
        manifest.splits,
        manifest.report,
        name=run_name,
        note={"federated": "this site's folder of a federated run"},
    )
    return manifest


def summarize(manifest: DataManifest) -> SiteSummary:
    classes = manifest.class_names
    persons = {s: [0] * len(classes) for s in SPLITS}
    frames = dict.fromkeys(SPLITS, 0)
    for split in SPLITS:
        for person in manifest.splits[split]:
            persons[split][manifest.person_labels[person]] += 1
            frames[split] += len(manifest.frames[person])
    return SiteSummary(list(classes), manifest.positive_class, persons, frames)


def site_accelerator(cfg: TrainConfig) -> Accelerator:
    """The site's Accelerator for a round: its precision and accumulation, no tracker (nothing is logged off-site)."""
    accelerator, _ = build_accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        report_to=None,
        dist_timeout_minutes=cfg.dist_timeout_minutes,
        output_dir=cfg.output_dir,
    )
    return accelerator


def private_words(
    root_dir: str | Path | None, label_excel: str | Path | None, sheet: str | None = None, header_row: int | None = None
) -> set[str]:
    """What of a site may name a person: the names directly in its root folder (person folders, loose files) and
    the values of each sheet column whose values are mostly distinct (IDs, dates, free text; not the header row,
    nor a column of a few repeated values such as the classes). What cannot be read is left out: no message of
    carotid's can quote it either."""
    words: set[str] = set()
    try:
        words |= {entry.name for entry in os.scandir(root_dir)} if root_dir else set()
    except OSError:
        pass
    try:
        rows = read_sheet(label_excel, sheet).rows
    except Exception:  # noqa: BLE001 - an unreadable sheet (often the site's error itself) has no value to hide
        return words
    header = header_row or (rows[0][0] if rows else 0)
    for column in zip_longest(*(values for number, values in rows if number > header)):
        texts = [text for text in map(cell_text, column) if text]
        if 2 * len(set(texts)) > len(texts):
            words |= set(texts)
    return words


def hide_private(text: str, words: set[str]) -> str:
    """`text` with every one of `words` (as a whole word) shown as PRIVATE: a site's message for the coordinator."""
    if not words:
        return text
    alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
    return re.sub(rf"(?<!\w)(?:{alternatives})(?!\w)", PRIVATE, text)
