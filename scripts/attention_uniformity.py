"""How far from uniform is a person model's attention, trained and untrained: the data behind "near uniform"
(carotid.evaluation.attention, docs/EVALUATION.md "Is the attention uniform?").

    python scripts/attention_uniformity.py WORK_DIR [--seeds 0 1] [--persons 100] [--epochs 40]
    python scripts/attention_uniformity.py WORK_DIR --measure EVAL_DIR [EVAL_DIR ...]

Per seed: the sparse-finding demo data (a plaque shows in 2 consecutive frames of a plaque person's 6-10), one
attention model trained as docs/EVALUATION.md's comparison does (4 persons x up to 8 frames a step, lr 1e-3), and
one left untrained (1 epoch at lr 1e-9: the initial weights, evaluated by the same code). `--measure` reads
finished evaluation folders of person models instead (findings.csv beside the data when there is one).

For each model's test persons it prints the largest weight x n (1.0 = uniform) by class, the normalised entropy,
the share the rule calls near uniform, and how many plaque persons have their highest weight on a plaque frame.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from carotid.evaluation.attention import UNIFORM_MAX_RATIO, attention_spread

UNTRAINED = ["--epochs", "1", "--lr", "1e-9"]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True, stdout=subprocess.DEVNULL)


def measure(evaluation: Path, data: Path | None) -> dict:
    frames = rows(evaluation / "predictions.csv")
    table = data / "findings.csv" if data else None
    marked = [r for r in rows(table) if r["finding"] == "1"] if table and table.is_file() else []
    findings = {(r["person_id"], (data / r["path"]).resolve()) for r in marked}
    ids = np.array([r["person_id"] for r in frames])
    attention = np.array([float(r["attention"]) for r in frames])
    persons = sorted(set(ids))
    spread = attention_spread(ids, attention, np.array(persons))
    counts = np.array([np.count_nonzero(ids == p) for p in persons])
    label = {r["person_id"]: r["true_label"] for r in frames}
    plaque = np.array([label[p] == "plaque" for p in persons])
    top = {}
    for r in frames:
        if label[r["person_id"]] == "plaque":
            top[r["person_id"]] = max(top.get(r["person_id"], (-1.0, "")), (float(r["attention"]), r["path"]))
    on_finding = sum((p, Path(path).resolve()) in findings for p, (_, path) in top.items()) if findings else "-"
    return {
        "ratio_plaque": spread.max_ratio[plaque],
        "ratio_normal": spread.max_ratio[~plaque],
        "entropy": spread.entropy / np.log(counts),
        "uniform": int(spread.uniform.sum()),
        "persons": len(persons),
        "top_on_finding": f"{on_finding}/{len(top)}",
        "auc": json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))["person"]["auc"],
    }


def spread_text(values: np.ndarray) -> str:
    return f"{values.min():.3f} / {np.median(values):.3f} / {values.max():.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--persons", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--measure", type=Path, nargs="+", help="evaluation folders to measure instead of training")
    args = parser.parse_args()
    print(f"rule: near uniform ⇔ largest weight x n < {UNIFORM_MAX_RATIO}")
    print(
        "model                max x n plaque (min/median/max)   max x n normal (min/median/max)   "
        "H/ln n (min/median)  near uniform  top frame on plaque  person AUC"
    )
    for evaluation in args.measure or []:
        config = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))
        root = (config.get("data") or {}).get("root_dir")
        show(evaluation.name, measure(evaluation, Path(root) if root else None))
    for seed in [] if args.measure else args.seeds:
        data = args.work / f"data_{seed}"
        if not (data / "label.xlsx").is_file():
            run("carotid.demo", "--out", str(data), "--persons", str(args.persons), "--min-frames", "6",
                "--frames", "10", "--finding-frames", "2", "--size", "64", "--seed", str(seed))  # fmt: skip
        runs = {"trained": ["--epochs", str(args.epochs), "--lr", "1e-3"], "untrained": UNTRAINED}
        for name, options in runs.items():
            out = args.work / f"{name}_{seed}"
            if not list(out.glob("train_*/eval_test_best/predictions.csv")):
                run("carotid.train", "--root-dir", str(data), "--label-excel", str(data / "label.xlsx"),
                    "--output-dir", str(out), "--model", "small_cnn", "--image-size", "32", "--num-workers", "0",
                    "--seed", str(seed), "--train-ratio", "0.6", "--val-ratio", "0.2", "--test-ratio", "0.2",
                    "--batch-size", "4", "--bag-size", "8", "--person-model", "attention", "--bootstrap", "0",
                    *options)  # fmt: skip
            show(f"seed {seed} {name}", measure(next(out.glob("train_*/eval_test_best")), data))


def show(name: str, m: dict) -> None:
    print(
        f"{name:<21}{spread_text(m['ratio_plaque']):<34}{spread_text(m['ratio_normal']):<34}"
        f"{m['entropy'].min():.4f} / {np.median(m['entropy']):.4f}     "
        f"{m['uniform']}/{m['persons']:<12}{m['top_on_finding']:<21}{m['auc']:.3f}"
    )


if __name__ == "__main__":
    main()
