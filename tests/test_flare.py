"""The NVIDIA FLARE adapter: carotid's local round under FLARE's Client API, a FedAvg job built with FLARE 2.9's
recipe API (FedBN through exclude_vars, FedProx through its recipe), run in FLARE's simulator on demo sites."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("nvflare")

from carotid import evaluate as evaluate_cli
from carotid import flare as flare_cli
from carotid.core.errors import UserError
from carotid.core.files import read_records
from carotid.data.demo import write_label_excel
from carotid.data.demo_sites import make_demo_sites
from carotid.data.sheet.labels import read_labels
from carotid.federated import flare_client, flare_job
from carotid.model.file import ModelFile
from carotid.training.config import TrainConfig
from carotid.training.local_round import evaluate_global, norm_keys
from carotid.training.site import site_accelerator, site_options

ROOT = Path(__file__).resolve().parents[1]
RUN = "fed_20260101_000000"
CLASSES = ["normal", "plaque"]


def demo_sites(tmp_path: Path) -> tuple[dict[str, dict], Path]:
    """Two non-IID sites (mostly plaque, mostly normal) and the test folder, tiny."""
    data = tmp_path / "data"
    make_demo_sites(data, sites=2, persons=30, mix="noniid", test_persons=8, frames=2, size=32, seed=0)
    sites = {
        name: {
            "root_dir": str(data / name),
            "label_excel": str(data / name / "label.xlsx"),
            "output_dir": str(tmp_path / "hospitals" / name),
        }
        for name in ("site_1", "site_2")
    }
    return sites, data / "test"


def coordinator(model: str = "small_cnn") -> TrainConfig:
    return TrainConfig(model=model, image_size=32, batch_size=8, num_workers=0, lr=1e-3, seed=3)


@pytest.fixture
def site_processes(monkeypatch):
    """Each site's client is a process of its own: it imports this checkout, on one thread."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def simulate(tmp_path, sites, cfg, classes=CLASSES, **federated) -> Path:
    job_dir = tmp_path / "job"
    recipe = flare_job.build_recipe(cfg, classes, sites, job_dir, run_name=RUN, **federated)
    folders = {name: Path(site["output_dir"]) / RUN / "flare_simulation" for name, site in sites.items()}
    return flare_job.simulate(recipe, job_dir, folders, tmp_path / "flare", federated["rounds"])


def text_files(folder: Path):
    for path in folder.rglob("*"):
        if path.is_file():
            try:
                yield path, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue


# ---------------------------------------------------------------------------------------------
# The job, exported (no simulation)
# ---------------------------------------------------------------------------------------------


def site_argv(sites: dict[str, dict], extra: dict[str, list[str]] | None = None) -> list[str]:
    argv = []
    for name, site in sites.items():
        argv += ["--site", name, site["root_dir"], site["label_excel"], *(extra or {}).get(name, [])]
    return argv


TRAIN_ARGV = ["--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--lr", "1e-3", "--seed", "3"]


def test_exported_fedbn_job_excludes_exactly_the_norm_layers_and_ships_carotid_options_not_carotid(tmp_path, capsys):
    sites, _ = demo_sites(tmp_path)
    # FedBN and FedProx together, site_2 on 2 processes of its machine.
    argv = [*site_argv(sites, {"site_2": ["processes=2"]}), "--rounds", "3", "--local-epochs", "2"]
    argv += ["--keep-local", "norm", "--fedprox-mu", "0.05"]
    argv += ["--model", "mobilenet_v3_small", *TRAIN_ARGV, "--output-dir", str(tmp_path / "out")]
    assert flare_cli.main([*argv, "--export", str(tmp_path / "jobs")]) == 0
    (job,) = (tmp_path / "jobs").glob("flare_*")
    assert f"nvflare job submit -j {job}" in capsys.readouterr().out

    server = json.loads((job / "app_server" / "config" / "config_fed_server.json").read_text(encoding="utf-8"))
    controller = next(w for w in server["workflows"] if w["path"].endswith("FedAvg"))
    pattern = re.compile(controller["args"]["exclude_vars"])
    cfg = coordinator("mobilenet_v3_small")
    model = flare_job.initial_model(json.loads(json.dumps(vars(cfg))), CLASSES, cfg.seed)
    excluded = {k for k in model.state_dict() if pattern.search(k)}
    assert excluded == norm_keys(model) and any(k.endswith("running_var") for k in excluded)
    assert controller["args"]["num_rounds"] == 3 and controller["args"]["fedprox_mu"] == 0.05

    for name, site in sites.items():
        app = job / f"app_{name}"
        client = json.loads((app / "config" / "config_fed_client.json").read_text(encoding="utf-8"))
        command = client["executors"][0]["executor"]["args"]["command"]
        script = command.index("custom/carotid_site.py")
        given = flare_client.site_settings(command[script + 1 :])  # what the site's client will read
        own = {"root_dir": site["root_dir"], "label_excel": site["label_excel"]}
        assert {k: given[k] for k in own} == own and given["output_dir"] == str(tmp_path / "out" / "sites" / name)
        assert given["processes"] == (2 if name == "site_2" else 1)
        assert (app / "custom" / "carotid_site.py").is_file() and not (app / "custom" / "carotid").exists()
        shipped = json.loads((app / "custom" / flare_client.JOB_OPTIONS).read_text(encoding="utf-8"))
        assert shipped["keep_local"] == "norm" and shipped["local_epochs"] == 2 and shipped["class_names"] == CLASSES
        assert shipped["options"]["model"] == "mobilenet_v3_small"
        assert not {"root_dir", "label_excel", "output_dir"} & set(shipped["options"])


def test_flare_cli_mistakes_are_one_error_line_before_anything_is_written(tmp_path, capsys):
    sites, _ = demo_sites(tmp_path)
    out = tmp_path / "out"
    argv = [*site_argv(sites), "--rounds", "1", *TRAIN_ARGV, "--output-dir", str(out)]
    assert flare_cli.main([*argv, "--epochs", "3"]) == 2
    assert (
        "error: --epochs is not an option of carotid-flare — use --rounds and --local-epochs" in capsys.readouterr().err
    )
    assert flare_cli.main([*argv, "--min-sites", "1"]) == 2
    assert "error: --min-sites is not an option of carotid-flare" in capsys.readouterr().err
    assert flare_cli.main([*site_argv(sites), "--resume", str(tmp_path)]) == 2
    assert f"error: {tmp_path} is not a carotid-flare run folder — pass OUT/flare_" in capsys.readouterr().err
    # A site whose sheet names other classes: the run stops before round 1, naming the site and both sets.
    other = tmp_path / "other.xlsx"
    rows = [
        (int(p), "stenosis" if c == "plaque" else c)
        for p, c in read_labels(sites["site_2"]["label_excel"]).labels.items()
    ]
    write_label_excel(other, rows)
    argv[argv.index(sites["site_2"]["label_excel"])] = str(other)
    assert flare_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: site site_2's classes ['normal', 'stenosis'] differ from site site_1's ['normal', 'plaque']"
    )
    assert not out.exists()


def test_a_site_sets_only_its_own_options_as_client_arguments(tmp_path):
    settings = flare_client.site_settings(["--root-dir", "d", "--label-excel", "l.xlsx", "--id-column", "MRN"])
    assert settings == {"root_dir": "d", "label_excel": "l.xlsx", "id_column": "MRN"}
    # The site's processes (GPUs) are its own too: from the job's site arguments back to the client.
    words = flare_job.site_args({"root_dir": "d", "processes": 2}).split()
    assert words == ["--root-dir", "d", "--processes", "2"]
    assert flare_client.site_settings(words) == {"root_dir": "d", "processes": 2}
    with pytest.raises(UserError, match="processes must be a whole number ≥ 1, not 0"):
        flare_job.site_args({"root_dir": "d", "processes": 0})
    with pytest.raises(UserError, match="--lr are the coordinator's options, not a site's"):
        flare_client.site_settings(["--root-dir", "d", "--lr", "0.1"])
    with pytest.raises(UserError, match=r"site options \['lr'\] are not a site's to set"):
        flare_job.site_args({"root_dir": "d", "lr": 0.1})


# ---------------------------------------------------------------------------------------------
# FLARE's simulator (a process per site)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # FLARE's simulator, 2 sites x (1 round, then 1 more resumed, one site on 2 processes): ~2 min
def test_flare_cli_runs_and_resumes_fedavg_in_the_simulator_to_a_carotid_model_file_and_no_person_leaves_a_site(
    tmp_path, site_processes, capsys
):
    sites, test_dir = demo_sites(tmp_path)
    out = tmp_path / "out"
    argv = [*site_argv(sites), "--rounds", "1", "--local-epochs", "1", "--model", "small_cnn", *TRAIN_ARGV]
    assert flare_cli.main([*argv, "--output-dir", str(out)]) == 0
    (run_dir,) = out.glob("flare_*")
    first = run_dir / "simulation" / run_dir.name
    assert flare_job.last_global_model(run_dir) == (1, first / flare_job.GLOBAL_MODEL)
    capsys.readouterr()

    # Resumed with one more round: FLARE's server starts from round 1's global model and counts on from it; site_2
    # now trains and scores on 2 processes of its machine (its client launches them: DDP over gloo on the CPU).
    with pytest.raises(UserError, match=r"--lr cannot change a resumed run"):
        flare_cli.run(*flare_cli.parse_flare_args([*site_argv(sites), "--resume", str(run_dir), "--lr", "0.1"]))
    with pytest.raises(UserError, match=r"has finished 1 of 1 rounds — give --rounds N with N > 1"):
        flare_cli.run(*flare_cli.parse_flare_args([*site_argv(sites), "--resume", str(run_dir)]))
    on_two = site_argv(sites, {"site_2": ["processes=2"]})
    assert flare_cli.main([*on_two, "--resume", str(run_dir), "--rounds", "2"]) == 0
    said = capsys.readouterr().out
    simulation = run_dir / "simulation_from_round_1" / run_dir.name
    model_path = run_dir / "models" / "final_model.pth"
    assert f"resuming {run_dir.name} after round 1 of 2" in said
    assert f"the global model after 2 rounds: {model_path}" in said
    server_log = (simulation / "server" / "log.txt").read_text(encoding="utf-8")
    assert f"Loading checkpoint from {first / flare_job.GLOBAL_MODEL}" in server_log
    assert re.findall(r"Round (\d+) started\.", server_log) == ["1"]  # FLARE counts from 0: the 2nd round
    assert flare_job.last_global_model(run_dir) == (2, simulation / flare_job.GLOBAL_MODEL)
    said_at = {  # each site's FLARE log, moved from the simulator's workspace to the site's own folder
        name: (out / "sites" / name / run_dir.name / "flare_simulation_from_round_1" / "log.txt").read_text("utf-8")
        for name in sites
    }
    assert not (simulation / "site_1").exists() and not (first / "site_2").exists()
    assert "this site trains each round on 2 processes" in said_at["site_2"]
    assert "this site trains each round on" not in said_at["site_1"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["federated"]["rounds"] == 2

    cfg = coordinator()
    start = flare_job.initial_model(json.loads(json.dumps(vars(cfg))), CLASSES, cfg.seed).state_dict()
    weights = flare_job.global_weights(simulation)
    assert set(weights) == set(start) and all(not torch.equal(weights[k], start[k]) for k in start)
    model = ModelFile.load(model_path)
    assert model.class_names == CLASSES and all(torch.equal(model.state_dict[k], weights[k]) for k in weights)
    run_cfg = TrainConfig(**yaml.safe_load((run_dir / "config.yaml").read_text())["options"])
    round_1 = flare_job.global_weights(first)
    for name, site in sites.items():  # each site trained both rounds on its own split, in its own folder, once each
        site_dir = out / "sites" / name / run_dir.name
        assert (site_dir / "splits.json").is_file()
        log = (site_dir / "train.log").read_text(encoding="utf-8")
        assert log.count("round 1: 1 local epoch(s) on 1 process(es)") == 1
        on = "2 process(es) (DDP over CPU processes)" if name == "site_2" else "1 process(es)"
        assert log.count(f"round 2: 1 local epoch(s) on {on}") == 1
        assert (site_dir / "rounds" / "round_001" / "metrics.csv").is_file()
        assert (site_dir / "rounds" / "round_002" / "metrics.csv").is_file()
        timings = read_records(site_dir / flare_client.TIMINGS)
        assert [row["round"] for row in timings] == ["1", "2"] and all(float(row["train_s"]) > 0 for row in timings)
        # What the site sent for round 2 (its score of round 1's global weights; site_2's from 2 processes) is what
        # one process scores on the same validation persons.
        own = site_options(run_cfg, {**site, "output_dir": str(out / "sites" / name)})
        alone = evaluate_global(site_accelerator(own), own, run_dir.name, round_1)
        assert float(timings[1]["val_persons"]) == alone["val_persons"] > 0
        assert float(timings[1]["global_val_loss"]) == pytest.approx(alone["val_loss"], rel=1e-5)
        auc = alone["val_person_auc"]  # None where the site's validation persons are of one class (sent as NaN)
        auc = float("nan") if auc is None else auc
        assert float(timings[1]["global_val_person_auc"]) == pytest.approx(auc, nan_ok=True)

    # Nothing of a site's persons reaches the coordinator: no person ID and no folder of a site in any text file of
    # the coordinator's folder (FLARE's server workspace, the job, config.yaml) or the model file's options.
    persons = [p for s in sites.values() for p in read_labels(s["label_excel"]).labels]
    tokens = [*persons, *(s["root_dir"] for s in sites.values())]
    texts = list(text_files(run_dir))
    texts.append((model_path, json.dumps(model.config)))
    leaked = [
        (path.name, token)
        for path, text in texts
        for token in tokens
        if re.search(rf"(?<![\d.]){re.escape(token)}(?![\d.])", text)
    ]
    assert leaked == [] and len(texts) > 10

    # An ordinary model file: carotid.evaluate scores it on the held-out test persons.
    evaluation = tmp_path / "eval"
    argv = ["--model", str(model_path), "--root-dir", str(test_dir), "--label-excel", str(test_dir / "label.xlsx")]
    assert evaluate_cli.main([*argv, "--out", str(evaluation), "--bootstrap", "50", "--num-workers", "0"]) == 0
    metrics = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_persons"] == 8 and metrics["counts"]["persons"] == {"normal": 4, "plaque": 4}
    assert 0.0 <= metrics["person"]["auc"] <= 1.0 and metrics["ci"]["person"]["auc"]["n"] == 50


@pytest.mark.slow  # a BatchNorm network in FLARE's simulator, 1 round: about 2 minutes on two cores
def test_fedbn_in_flares_simulator_keeps_batchnorm_at_each_site(tmp_path, site_processes):
    sites, _ = demo_sites(tmp_path)
    cfg = coordinator("mobilenet_v3_small")
    simulation = simulate(tmp_path, sites, cfg, rounds=1, local_epochs=1, keep_local="norm")

    model = flare_job.initial_model(json.loads(json.dumps(vars(cfg))), CLASSES, cfg.seed)
    start, norms = model.state_dict(), norm_keys(model)
    weights = flare_job.global_weights(simulation)
    # The server never averaged a norm layer: they are the starting ones; every other layer was averaged.
    assert all(torch.equal(weights[k], start[k]) for k in norms)
    assert any(not torch.equal(weights[k], start[k]) for k in set(start) - norms)
    kept = {name: flare_job.site_norm_layers(site_options(cfg, site), RUN) for name, site in sites.items()}
    assert all(set(layers) == norms for layers in kept.values())
    means = [k for k in norms if k.endswith("running_mean")]
    assert all(not torch.equal(kept["site_1"][k], start[k]) for k in means)
    assert all(not torch.equal(kept["site_1"][k], kept["site_2"][k]) for k in means)


@pytest.mark.slow  # FLARE's simulator up to the sites' first check: about a minute
def test_a_site_that_cannot_join_stops_the_job_with_its_error_under_its_name(tmp_path, site_processes):
    sites, _ = demo_sites(tmp_path)
    with pytest.raises(UserError) as caught:
        simulate(tmp_path, sites, coordinator(), classes=["normal", "stenosis"], rounds=1, local_epochs=1)
    message = str(caught.value)
    assert message.startswith("the FLARE job stopped after")
    assert "error: this site's classes ['normal', 'plaque'] differ from the job's ['normal', 'stenosis']" in message
    assert re.search(r"site_[12]: error:", message)
