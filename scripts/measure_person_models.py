"""Frame model against person models on sparse-finding demo data: the table in docs/EVALUATION.md.

For each data seed (a demo data set: persons of 6–10 frames of --frame-size px, the plaque in 2 frames of each
plaque person) and each training seed (--seed: the split and the weights), the same `carotid.train` command is run
once per --person-model (frames, mean, attention), then `carotid.evaluate` on the test persons. Per run it reports the
person AUC with its 95% person-bootstrap interval (a frame model: mean and max of its frame probabilities),
the optimizer steps taken (the last checkpoint's step), and for a person model the share of positive test
persons whose highest-attention frame shows the plaque (findings.csv). Results go to OUT/results.csv, one row
per run; a run already there is skipped, so an interrupted measurement continues.

    nice -n 10 python scripts/measure_person_models.py --out runs_p30b --label after  # the 5 x 2 table
    nice -n 10 python scripts/measure_person_models.py --out runs_p30 --frame-size 64 --label after  # the first
    PYTHONPATH=<older checkout> python scripts/measure_person_models.py --out runs_p30b --label before
    python scripts/measure_person_models.py --out runs_p30b --table                  # the Markdown table

Extra flags for every run go after `--`: ... --label dropout -- --attention-dropout 0.25
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sys
from pathlib import Path

import numpy as np

KINDS = ("frames", "mean", "attention")
FIELDS = ["label", "data_seed", "train_seed", "kind", "aggregation", "auc", "low", "high", "steps", "top_frame"]


def make_data(root: Path, seed: int, persons: int, size: int) -> Path:
    from carotid.data.demo import make_demo_data

    data = root / f"data_{seed}"
    if not (data / "label.xlsx").exists():
        make_demo_data(data, persons, 10, size, seed, finding_frames=2, min_frames=6)
    return data


def in_process(main, args: list[str]) -> None:
    """A CLI's main(args) in this process (no interpreter start-up per run), with fresh Accelerate state."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    if code != 0:
        raise SystemExit(f"{main.__module__} {' '.join(args)} ended with {code}")


def train_and_evaluate(data: Path, out: Path, kind: str, seed: int, args) -> Path:
    """The run's evaluation folder (the test persons, best model)."""
    from carotid import evaluate, train

    common = ["--root-dir", str(data), "--label-excel", str(data / "label.xlsx"), "--model", "small_cnn"]
    common += ["--image-size", "32", "--epochs", str(args.epochs), "--lr", "1e-3", "--num-workers", "0"]
    common += ["--train-ratio", "0.6", "--val-ratio", "0.2", "--test-ratio", "0.2", "--cache", "--no-test"]
    common += ["--batch-size", str(args.batch_size), "--seed", str(seed), "--person-model", kind]
    in_process(train.main, [*common, *args.extra, "--output-dir", str(out)])
    run_dir = sorted(out.glob("train_*"))[-1]
    evaluation = run_dir / "eval_test_best"
    flags = ["--failures", "0", "--bootstrap", "0", "--num-workers", "0", "--cache"]
    in_process(evaluate.main, ["--run-dir", str(run_dir), *flags, "--out", str(evaluation)])
    return evaluation


def person_table(evaluation: Path) -> dict[str, dict]:
    """Per test person: label (1 = plaque), frame probabilities of plaque, attention weights, frame files."""
    persons: dict[str, dict] = {}
    with open(evaluation / "predictions.csv", newline="") as f:
        for row in csv.DictReader(f):
            p = persons.setdefault(row["person_id"], {"label": int(row["true_label"] == "plaque"), "rows": []})
            attention = float(row["attention"]) if row["attention"] else None
            prob = float(row["prob_plaque"]) if row["prob_plaque"] else None  # a person model: per person only
            p["rows"].append((Path(row["path"]).name, prob, attention))
    with open(evaluation / "person_predictions.csv", newline="") as f:
        for row in csv.DictReader(f):
            persons[row["person_id"]]["prob"] = float(row["prob_plaque"])
    return persons


def auc_with_ci(labels: np.ndarray, scores: np.ndarray, n: int = 1000) -> tuple[float, float, float]:
    """AUC and its percentile interval from resampling persons within each class (as pROC does)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    draws = [np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]) for _ in range(n)]
    values = [roc_auc_score(labels[d], scores[d]) for d in draws]
    return float(roc_auc_score(labels, scores)), *map(float, np.percentile(values, [2.5, 97.5]))


def findings(data: Path) -> dict[tuple[str, str], int]:
    with open(data / "findings.csv", newline="") as f:
        return {(r["person_id"], Path(r["path"]).name): int(r["finding"]) for r in csv.DictReader(f)}


def score_run(data: Path, evaluation: Path, kind: str) -> list[dict]:
    persons = person_table(evaluation)
    labels = np.array([p["label"] for p in persons.values()])
    shown = findings(data)
    steps = int(sorted(evaluation.parent.glob("checkpoints/checkpoint-*"))[-1].name.split("-")[1])
    rows = []
    for aggregation in ("mean", "max") if kind == "frames" else ("pooled",):
        pick = {"max": np.max, "mean": np.mean, "pooled": None}[aggregation]
        scores = np.array([pick([r[1] for r in p["rows"]]) if pick else p["prob"] for p in persons.values()])
        auc, low, high = auc_with_ci(labels, scores)
        top = ""
        if kind != "frames":
            hits = [shown[(pid, max(p["rows"], key=lambda r: r[2])[0])] for pid, p in persons.items() if p["label"]]
            top = f"{sum(hits)}/{len(hits)}"
        rows.append({"kind": kind, "aggregation": aggregation, "auc": round(auc, 4), "low": round(low, 4)})
        rows[-1] |= {"high": round(high, 4), "steps": steps, "top_frame": top}
    return rows


def measure(args) -> None:
    results = args.out / "results.csv"
    done = set()
    if results.exists():
        with open(results, newline="") as f:
            done = {(r["label"], r["data_seed"], r["train_seed"], r["kind"]) for r in csv.DictReader(f)}
    for data_seed in args.data_seeds:
        data = make_data(args.out, data_seed, args.persons, args.frame_size)
        for train_seed in args.train_seeds:
            for kind in args.kinds:
                if (args.label, str(data_seed), str(train_seed), kind) in done:
                    continue
                out = args.out / args.label / f"d{data_seed}_s{train_seed}_{kind}"
                evaluation = train_and_evaluate(data, out, kind, train_seed, args)
                rows = [
                    {"label": args.label, "data_seed": data_seed, "train_seed": train_seed} | r
                    for r in score_run(data, evaluation, kind)
                ]
                new = not results.exists()
                with open(results, "a", newline="") as f:
                    writer = csv.DictWriter(f, FIELDS)
                    if new:
                        writer.writeheader()
                    writer.writerows(rows)
                print(*(f"{r['label']} d{data_seed} s{train_seed} {kind}/{r['aggregation']}: {r['auc']}" for r in rows))


def table(args) -> None:
    """Markdown: a row per (data seed, training seed), a column per label x model; then the worst and the mean."""
    with open(args.out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(dict.fromkeys((r["label"], r["kind"], r["aggregation"]) for r in rows))
    cells = {(r["data_seed"], r["train_seed"], r["label"], r["kind"], r["aggregation"]): r for r in rows}
    keys = sorted({(r["data_seed"], r["train_seed"]) for r in rows})
    names = [f"{label}: {kind}{'' if agg == 'pooled' else ', ' + agg}" for label, kind, agg in columns]
    print("| data, seed | " + " | ".join(names) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for key in keys:
        shown = []
        for column in columns:
            r = cells.get((*key, *column))
            shown.append(
                ""
                if r is None
                else f"{float(r['auc']):.3f} [{float(r['low']):.2f}, {float(r['high']):.2f}]"
                f" · {r['steps']} steps" + (f" · top {r['top_frame']}" if r["top_frame"] else "")
            )
        print(f"| {key[0]}, {key[1]} | " + " | ".join(shown) + " |")
    for name, pick in (("worst", min), ("mean", np.mean)):
        values = [[float(cells[(*k, *c)]["auc"]) for k in keys if (*k, *c) in cells] for c in columns]
        print(f"| {name} | " + " | ".join(f"{pick(v):.3f}" if v else "" for v in values) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder of the data sets, runs and results.csv.")
    parser.add_argument("--label", default="after", help="Name of this set of runs in results.csv.")
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--persons", type=int, default=200, help="Persons per demo data set.")
    parser.add_argument(
        "--frame-size",
        type=int,
        default=128,
        help="Width of the demo frames made (the demo's own 128; the first table used 64). Training is at 32 px.",
    )
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32, help="The same --batch-size for every model.")
    parser.add_argument("--table", action="store_true", help="Print the Markdown table of OUT/results.csv.")
    parser.add_argument("extra", nargs="*", help="Flags for every carotid.train run (after --).")
    args = parser.parse_args(argv)
    table(args) if args.table else measure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
