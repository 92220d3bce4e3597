"""The federated table of docs/EVALUATION.md: on non-IID demo sites, each site alone, FedAvg, FedProx, FedBN and
pooled training, all with the same total epochs, scored by person AUC (95% person-bootstrap CI) on the same
held-out persons, for several training seeds.

    nice -n 10 python scripts/federated_table.py --out fed_eval [--seeds 0 1 2 --rounds 4 --local-epochs 2]

The data: `carotid.demo --sites 3 --site-mix noniid` (one site mostly plaque, one mostly normal, one small, each its
own scanner gain and sheet headers) and its common test folder, made once (data seed 0). Site alone and pooled:
`carotid.train` for rounds x local epochs on that site's folder (pooled: every site's persons in one folder, linked,
with one sheet). Federated: carotid's FLARE job in FLARE's simulator (`carotid.federated.flare_job`), one process
per site. FedBN leaves one model per site (the global weights with that site's own norm layers): each is scored.
Every model is the last one (no best-epoch pick, since a federated run picks none). `carotid.evaluate` scores it.

Writes OUT/results.csv (one row per model and seed, appended as they finish: a rerun skips what is done) and
OUT/table.md. Each FLARE run's per-round seconds stay in its sites' folders (benchmarks/federated_round.py reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from carotid import evaluate as evaluate_cli
from carotid import train as train_cli
from carotid.core.files import read_records, write_table
from carotid.data.demo import write_label_excel
from carotid.data.demo_sites import make_demo_sites
from carotid.data.sheet.labels import read_labels
from carotid.federated import flare_job
from carotid.training.config import TrainConfig
from carotid.training.site import site_options

COLUMNS = ["method", "seed", "auc", "low", "high", "seconds"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for the data, the runs and the table.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Training seeds.")
    parser.add_argument("--rounds", type=int, default=4, help="Federated rounds.")
    parser.add_argument("--local-epochs", type=int, default=2, help="Epochs per round (alone/pooled: the product).")
    parser.add_argument("--persons", type=int, default=90, help="Persons over the 3 sites.")
    parser.add_argument("--test-persons", type=int, default=40, help="Held-out persons common to all.")
    parser.add_argument("--frames", type=int, default=6, help="Frames per person.")
    parser.add_argument("--size", type=int, default=64, help="Demo frame width in pixels.")
    parser.add_argument("--image-size", type=int, default=32, help="Model input size.")
    parser.add_argument("--fedprox-mu", type=float, default=0.01, help="FedProx's mu.")
    parser.add_argument("--bootstrap", type=int, default=1000, help="Person-bootstrap resamples of the CI.")
    return parser.parse_args()


def options(args, seed: int) -> list[str]:
    """The training options every method shares (carotid.train flags); the table was measured with frame models."""
    return [
        "--model", "small_cnn", "--image-size", str(args.image_size), "--batch-size", "16", "--lr", "2e-3",
        "--scheduler", "none", "--seed", str(seed), "--num-workers", "0", "--person-model", "frames",
    ]  # fmt: skip


def make_data(out: Path, args) -> dict[str, Path]:
    """{site name: its folder} plus "pooled" and "test"."""
    data = out / "data"
    if not (data / "sites.csv").is_file():
        make_demo_sites(data, 3, args.persons, "noniid", args.test_persons, args.frames, args.size, seed=0)
    folders = {f"site_{k}": data / f"site_{k}" for k in (1, 2, 3)}
    pooled = data / "pooled"
    if not (pooled / "label.xlsx").is_file():
        rows = []
        for folder in folders.values():
            for person, label in read_labels(folder / "label.xlsx").labels.items():
                (pooled / person).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(folder / person, pooled / person, target_is_directory=True)
                rows.append((int(person), label))
        write_label_excel(pooled / "label.xlsx", sorted(rows))
    return folders | {"pooled": pooled, "test": data / "test"}


def score(model: Path, test: Path, out: Path, args, seed: int) -> tuple[float, float, float]:
    """Person AUC and its CI on the held-out persons (carotid.evaluate)."""
    argv = [
        "--model",
        str(model),
        "--root-dir",
        str(test),
        "--label-excel",
        str(test / "label.xlsx"),
        "--out",
        str(out),
    ]
    argv += ["--bootstrap", str(args.bootstrap), "--seed", str(seed), "--num-workers", "0"]
    if evaluate_cli.main([*argv, "--heatmaps", "0", "--failures", "0"]) != 0:
        raise SystemExit(f"carotid.evaluate failed on {model}")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    ci = metrics["ci"]["person"]["auc"]
    return metrics["person"]["auc"], ci["low"], ci["high"]


def train_alone(folder: Path, out: Path, args, seed: int) -> Path:
    epochs = str(args.rounds * args.local_epochs)
    argv = ["--root-dir", str(folder), "--label-excel", str(folder / "label.xlsx"), "--epochs", epochs]
    if train_cli.main([*argv, *options(args, seed), "--no-test", "--output-dir", str(out)]) != 0:
        raise SystemExit(f"carotid.train failed on {folder}")
    return next(out.glob("train_*/models/final_model.pth"))


def federate(method: str, folders: dict[str, Path], out: Path, args, seed: int) -> dict[str, Path]:
    """{model name: model file} of one FLARE run: the global model, or each FedBN site's own."""
    cfg, _ = train_cli.parse_train_args(options(args, seed))
    cfg = TrainConfig(**{**vars(cfg), "output_dir": str(out)})
    sites = {
        name: {"root_dir": str(f), "label_excel": str(f / "label.xlsx"), "output_dir": str(out / "sites" / name)}
        for name, f in folders.items()
    }
    keep_local = "norm" if method == "FedBN" else None
    mu = args.fedprox_mu if method == "FedProx" else 0.0
    run = f"{method.lower()}_{seed}"
    recipe = flare_job.build_recipe(
        cfg, ["normal", "plaque"], sites, out / "job", run_name=run, rounds=args.rounds,
        local_epochs=args.local_epochs, keep_local=keep_local, fedprox_mu=mu,
    )  # fmt: skip
    folders = {name: Path(site["output_dir"]) / run / "flare_simulation" for name, site in sites.items()}
    simulation = flare_job.simulate(recipe, out / "job", folders, out / "flare", args.rounds)
    weights = flare_job.global_weights(simulation)
    if keep_local is None:
        return {method: flare_job.save_model(out / "global.pth", cfg, ["normal", "plaque"], weights, args.rounds)}
    models = {}
    for name, site in sites.items():
        own = weights | flare_job.site_norm_layers(site_options(cfg, site), run)
        path = out / f"{name}.pth"
        models[f"FedBN ({name}'s model)"] = flare_job.save_model(path, cfg, ["normal", "plaque"], own, args.rounds)
    return models


def table(rows: list[dict], seeds: list[int]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| method | " + " | ".join(f"seed {s}: person AUC [95% CI]" for s in seeds) + " | mean AUC |"]
    lines.append("|---" * (len(seeds) + 2) + "|")
    for method in methods:
        cells, aucs = [], []
        for seed in seeds:
            row = next((r for r in rows if r["method"] == method and int(r["seed"]) == seed), None)
            if row is None:
                cells.append("—")
                continue
            aucs.append(float(row["auc"]))
            cells.append(f"{float(row['auc']):.3f} [{float(row['low']):.3f}, {float(row['high']):.3f}]")
        mean = f"{statistics.mean(aucs):.3f}" if aucs else "—"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folders = make_data(args.out, args)
    sites = {k: v for k, v in folders.items() if k.startswith("site_")}
    results = args.out / "results.csv"
    rows = read_records(results) if results.is_file() else []
    done = {(r["method"], int(r["seed"])) for r in rows}
    for seed in args.seeds:
        work = args.out / f"seed_{seed}"
        jobs = [(f"{name} alone", name) for name in sites] + [("pooled", "pooled")]
        jobs += [(method, None) for method in ("FedAvg", "FedProx", "FedBN")]
        for method, folder in jobs:
            if (method, seed) in done or (
                method == "FedBN" and any(m.startswith("FedBN") for m, s in done if s == seed)
            ):
                continue
            start = time.perf_counter()
            slug = method.split()[0].lower()
            if folder is not None:
                models = {method: train_alone(folders[folder], work / slug, args, seed)}
            else:
                models = federate(method, sites, work / slug, args, seed)
            seconds = time.perf_counter() - start
            for name, model in models.items():
                auc, low, high = score(model, folders["test"], work / slug / f"eval_{Path(model).stem}", args, seed)
                rows.append({"method": name, "seed": seed, "auc": auc, "low": low, "high": high, "seconds": seconds})
                write_table(results, COLUMNS, [[r[c] for c in COLUMNS] for r in rows])
                print(f"seed {seed} {name}: person AUC {auc:.3f} [{low:.3f}, {high:.3f}] ({seconds:.0f} s)", flush=True)
    (args.out / "table.md").write_text(table(rows, args.seeds), encoding="utf-8")
    print(table(rows, args.seeds))


if __name__ == "__main__":
    main()
