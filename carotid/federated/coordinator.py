"""The coordinator's run folder OUT/fed_YYYYMMDD_HHMMSS/ (no Flower import): config.yaml, train.log, metrics.csv
(round × site, plus the aggregate), models/best_model.pth and models/final_model.pth as ordinary carotid model
files, report.html. It holds counts and aggregate numbers of the sites, never a person ID or a path of a site.

Order at the end of a round (what a kill leaves is consistent): final_model.pth (the round's global weights,
`epoch` = the round) → best_model.pth when the person-weighted validation metric improved → metrics.csv. A
resumed run starts after final_model.pth's round and drops metrics rows of later rounds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from carotid.core import run_dir as run_folder
from carotid.core.errors import UserError
from carotid.core.files import atomic_write_text, read_records, write_records
from carotid.core.run_dir import RunDir
from carotid.data.classes import positive_index
from carotid.evaluation.selection import choose_on_validation
from carotid.model.file import ModelFile
from carotid.report.federated import ALL_SITES, federated_report  # ALL_SITES: the all-sites row's name
from carotid.training.config import TrainConfig
from carotid.training.epoch import model_contract

COLUMNS = [
    "round",
    "site",
    "status",
    "train_persons",
    "train_frames",
    "train_loss",
    "val_persons",
    "val_person_auc",
    "val_loss",
]


@dataclass
class Federation:
    """The federated settings of a run (config.yaml's `federated:` section)."""

    rounds: int
    local_epochs: int = 1
    fedprox_mu: float = 0.0
    keep_local: str | None = None  # "norm": FedBN
    sites: int = 1  # sites to wait for before round 1
    min_sites: int = 1  # a round with fewer answering sites stops the run
    round_timeout_minutes: float = 60.0

    @property
    def strategy(self) -> str:
        name = "FedProx" if self.fedprox_mu > 0 else "FedAvg"
        return f"{name} + FedBN" if self.keep_local == "norm" else name


def check_classes(summaries: dict[str, dict]) -> tuple[list[str], str | None]:
    """(the class names every site shares, the positive class), else a UserError naming the site that differs."""
    # By site name, not by the order the sites answered: the same sites give the same message every time.
    (first, reference), *others = sorted(summaries.items())
    for name, summary in others:
        for key, what in (("class_names", "classes"), ("positive_class", "positive class")):
            if summary[key] != reference[key]:
                raise UserError(
                    f"site {name} has {what} {summary[key]}, site {first} has {reference[key]}",
                    "give every site's sheet the same class names (same spelling), or set --positive-class",
                )
    return reference["class_names"], reference["positive_class"]


class CoordinatorRun:
    """What the coordinator writes, round by round."""

    def __init__(self, fed_dir: Path, cfg: TrainConfig, class_names: list[str], positive: str | None, sites: dict):
        self.paths = RunDir(fed_dir)
        self.cfg, self.class_names = cfg, class_names
        self.positive_index = positive_index(class_names, positive)
        self.monitor = choose_monitor(class_names, sites)
        self.contract = model_contract(cfg, class_names, self.monitor, self.positive_index)
        choice = choose_on_validation(
            None, aggregation=self.contract["aggregation"], positive_index=self.positive_index
        )
        self.threshold = choice["threshold"], "default: validation predictions never leave the sites"
        self.rows: list[dict] = read_records(self.paths.metrics_csv) if self.paths.metrics_csv.exists() else []

    @classmethod
    def create(cls, output_dir: str, run_name: str, cfg: TrainConfig, fed: Federation, summaries: dict[str, dict]):
        class_names, positive = check_classes(summaries)
        staging = run_folder.stage_run_dir(output_dir)
        note = {
            "federated": dataclasses.asdict(fed) | {"strategy": fed.strategy},
            "class_names": class_names,
            "positive_class": positive,
            "sites": summaries,  # counts per split and class: no ID, no path
            "versions": run_folder.software_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        run_folder.write_run_config(RunDir(staging).config, dataclasses.asdict(cfg), note)
        RunDir(staging).models.mkdir()
        fed_dir = run_folder.publish_run_dir(staging, "fed", run_name)
        return cls(fed_dir, cfg, class_names, positive, summaries)

    @classmethod
    def reopen(cls, fed_dir: Path) -> tuple[CoordinatorRun, Federation, dict]:
        saved = run_folder.read_run_config(fed_dir)
        if "federated" not in saved:
            raise UserError(f"{fed_dir} is not a federated run", "pass a fed_YYYYMMDD_HHMMSS folder to --resume")
        fields = {f.name for f in dataclasses.fields(Federation)}
        fed = Federation(**{k: v for k, v in saved["federated"].items() if k in fields})
        options = TrainConfig(**saved["options"])
        run = cls(Path(fed_dir), options, saved["class_names"], saved["positive_class"], saved["sites"])
        return run, fed, saved["sites"]

    def log(self, line: str) -> None:
        print(line, flush=True)
        with open(self.paths.log, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    # -----------------------------------------------------------------------------------------
    # Resume
    # -----------------------------------------------------------------------------------------

    def last_round(self) -> tuple[int, dict[str, torch.Tensor] | None]:
        """(the last completed round, its global weights); (0, None) before the first."""
        if not self.paths.final_model.exists():
            return 0, None
        final = ModelFile.load(self.paths.final_model)
        self.rows = [r for r in self.rows if int(r["round"]) <= final.epoch]
        return final.epoch, final.state_dict

    # -----------------------------------------------------------------------------------------
    # A round
    # -----------------------------------------------------------------------------------------

    def end_round(self, round_number: int, site_rows: dict[str, dict], weights: dict[str, torch.Tensor]) -> dict:
        """Write the round's model files and metrics rows; returns the aggregate row."""
        total = aggregate_row(round_number, site_rows)
        best = self.best_value()
        value = total.get(self.monitor)
        self.save_model("final", round_number, weights, total)
        if _number(value) and (best is None or (value < best if self.monitor.endswith("loss") else value > best)):
            self.save_model("best", round_number, weights, total)
            total["best"] = True
        self.rows += [{"round": round_number, "site": site} | row for site, row in site_rows.items()]
        self.rows.append({k: v for k, v in total.items() if k != "best"})
        write_records(self.paths.metrics_csv, self.rows, COLUMNS)
        return total

    def best_value(self) -> float | None:
        values = [float(r[self.monitor]) for r in self.rows if r["site"] == ALL_SITES and _number(r.get(self.monitor))]
        if not values:
            return None
        return min(values) if self.monitor.endswith("loss") else max(values)

    def save_model(self, which: str, round_number: int, weights: dict[str, torch.Tensor], total: dict) -> None:
        threshold, source = self.threshold
        ModelFile(
            state_dict={k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
            **self.contract,
            epoch=round_number,
            metrics={k: v for k, v in total.items() if _number(v)},
            threshold=threshold,
            threshold_source=source if threshold is not None else None,
        ).save(self.paths.model(which))

    def write_report(self, strategy: str) -> Path:
        atomic_write_text(self.paths.report, federated_report(self.rows, self.monitor, strategy, self.paths.path.name))
        return self.paths.report


def choose_monitor(class_names: list[str], sites: dict) -> str:
    """What picks best_model.pth: the person-weighted validation AUC when some site's validation persons hold both
    classes (the all-sites AUC averages the sites where it is defined), else the validation loss."""
    both = any(all(n > 0 for n in summary["persons"]["val"]) for summary in sites.values())
    return "val_person_auc" if len(class_names) == 2 and both else "val_loss"


def aggregate_row(round_number: int, site_rows: dict[str, dict]) -> dict:
    """The person-weighted means of the sites that answered: train loss by training persons, validation
    numbers by validation persons."""
    answered = [row for row in site_rows.values() if row.get("status") == "ok"]
    out = {"round": round_number, "site": ALL_SITES, "status": f"{len(answered)}/{len(site_rows)} sites"}
    for count, keys in (("train_persons", ("train_loss",)), ("val_persons", ("val_person_auc", "val_loss"))):
        out[count] = sum(int(row.get(count) or 0) for row in answered)
        for key in keys:
            pairs = [(float(row[key]), int(row[count])) for row in answered if _number(row.get(key)) and row[count]]
            weight = sum(n for _, n in pairs)
            out[key] = sum(v * n for v, n in pairs) / weight if weight else None
    out["train_frames"] = sum(int(row.get("train_frames") or 0) for row in answered)
    return out


def _number(value) -> bool:
    if value in (None, ""):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
