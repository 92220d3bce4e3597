"""The federated parts that need no running deployment: no framework import below the adapters, carotid-federate's
option errors, the coordinator's numbers and files, and Flower's FedAvg over BatchNorm statistics (what a site then
loads)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from carotid.core.errors import UserError
from carotid.federated.coordinator import ALL_SITES, CoordinatorRun, Federation, aggregate_row, check_classes
from carotid.federated.options import parse_federate_args, parse_sites
from carotid.model.file import ModelFile
from carotid.training.config import TrainConfig
from carotid.training.epoch import build_run_model
from carotid.training.local_round import load_global, norm_keys
from carotid.training.site import hide_private, private_words
from tests.conftest import make_data, run_module, write_xlsx

PACKAGE = Path(__file__).resolve().parents[1] / "carotid"
FRAMEWORKS = ("flwr", "nvflare")


def framework_imports(path: Path) -> list[str]:
    """The Flower or FLARE modules a file imports (at any depth of its code)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found += [name for name in names if name.split(".")[0] in FRAMEWORKS]
    return found


def test_the_local_round_and_everything_below_the_adapters_import_neither_flower_nor_flare():
    """Only carotid.federated (the adapters) and its CLIs import a framework; with the layers contract nothing the
    training layer imports can, so the local round is framework-neutral."""
    adapters = [PACKAGE / "federated", PACKAGE / "federate.py", PACKAGE / "flare.py"]
    below = [p for p in PACKAGE.rglob("*.py") if not any(p == a or a in p.parents for a in adapters)]
    assert PACKAGE / "training" / "local_round.py" in below
    assert [f"{p.relative_to(PACKAGE)}: {m}" for p in below for m in framework_imports(p)] == []
    # The scan sees the adapters' imports: Flower's in the ClientApp, FLARE's in its client.
    assert "flwr.clientapp" in framework_imports(PACKAGE / "federated" / "client_app.py")
    assert "nvflare.client" in framework_imports(PACKAGE / "federated" / "flare_client.py")


def test_the_extras_pin_the_frameworks_tested_and_the_base_install_keeps_python_3_10():
    from carotid.federated import patient

    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == ">=3.10"
    extras = project["optional-dependencies"]
    assert extras["federated"] == [f"flwr=={patient.FLOWER_VERSION}; python_version >= '3.11'"]
    assert extras["flare"] == ["nvflare==2.9.0; python_version >= '3.10'"]


# ---------------------------------------------------------------------------------------------
# carotid-federate's options
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    return [make_data(root / name, persons=4, frames=2, size=32, seed=i) for i, name in enumerate(("a", "b"))]


def test_each_site_brings_its_own_folder_sheet_and_sheet_settings(two_sites):
    (root_a, label_a), (root_b, label_b) = two_sites
    cfg, given = parse_federate_args(
        ["--site", "hospA", str(root_a), str(label_a), "--site", "hospB", str(root_b), str(label_b),
         "id-column=MRN", "header-row=2", "processes=2", "--rounds", "3", "--id-column", "ID"]
    )  # fmt: skip
    sites = parse_sites(cfg)
    assert list(sites) == ["hospA", "hospB"] and cfg.rounds == 3 and "rounds" in given
    assert sites["hospA"]["id-column"] == "ID" and sites["hospB"]["id-column"] == "MRN"
    assert sites["hospB"]["header-row"] == 2 and sites["hospA"]["root-dir"] == str(root_a.resolve())
    # Each site's processes (GPUs): --site-processes for all, processes=N for one.
    assert (sites["hospA"]["processes"], sites["hospB"]["processes"]) == (1, 2)
    cfg, _ = parse_federate_args(["--site", "hospA", str(root_a), str(label_a), "--site-processes", "4"])
    assert parse_sites(cfg)["hospA"]["processes"] == 4


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--site", "hospA", "ROOT"], "needs NAME ROOT_DIR LABEL_EXCEL"),
        (["--site", "all", "ROOT", "LABEL"], "not a plain name"),
        (["--site", "hospA", "ROOT", "LABEL", "--site", "hospA", "ROOT", "LABEL"], "given twice"),
        (["--site", "hospA", "ROOT", "LABEL", "colour=red"], "not KEY=VALUE"),
        (["--site", "hospA", "ROOT", "LABEL", "processes=0"], "processes=0 is not a whole number"),
        (["--site", "hospA", "ROOT", "LABEL", "--site-processes", "0"], "--site-processes must be > 0"),
        (["--rounds", "2"], "no site given"),
    ],
)
def test_a_wrong_site_is_one_error_line(two_sites, args, said):
    (root, label), _ = two_sites
    args = [str(root) if a == "ROOT" else str(label) if a == "LABEL" else a for a in args]
    with pytest.raises(UserError, match=said):
        parse_sites(parse_federate_args(args)[0])


def test_the_cli_refuses_train_only_options_with_the_fix(two_sites):
    (root, label), _ = two_sites
    result = run_module("carotid.federate", "--site", "a", str(root), str(label), "--epochs", "3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --epochs is not an option of carotid-federate")
    assert "--local-epochs" in result.stderr and "Traceback" not in result.stderr


def test_a_sites_error_for_the_coordinator_hides_its_folder_names_and_id_like_sheet_values(tmp_path):
    root = tmp_path / "frames"
    for person in ("MRN-0042", "MRN-0043"):
        (root / person).mkdir(parents=True)
    rows = [["Study of 2024"], ["MRN", "Diagnosis", "Scan date"]]  # a title row above the headers
    rows += [[f"MRN-00{40 + i}", "plaque" if i % 2 else "normal", f"2024-03-{10 + i}"] for i in range(6)]
    label = write_xlsx(tmp_path / "labels.xlsx", rows)
    words = private_words(root, label, header_row=2)
    assert {"MRN-0042", "MRN-0045", "2024-03-15"} <= words and not {"plaque", "normal", "MRN", "Diagnosis"} & words
    said = "person MRN-0042 (2024-03-12) has no frames in ROOT_DIR/MRN-0043; MRN-00420 is no ID; classes: plaque"
    assert hide_private(said, words) == (
        "person [private] ([private]) has no frames in ROOT_DIR/[private]; MRN-00420 is no ID; classes: plaque"
    )
    assert private_words(None, tmp_path / "missing.xlsx") == set()  # nothing readable: nothing to hide


# ---------------------------------------------------------------------------------------------
# The coordinator
# ---------------------------------------------------------------------------------------------


def test_the_all_sites_row_is_person_weighted_over_the_sites_that_answered():
    rows = {
        "a": {"status": "ok", "train_persons": 30, "train_loss": 0.2, "val_persons": 10, "val_person_auc": 0.9},
        "b": {"status": "ok", "train_persons": 10, "train_loss": 0.6, "val_persons": 30, "val_person_auc": 0.5},
        "c": {"status": "missing"},
    }
    total = aggregate_row(4, rows)
    assert total["site"] == ALL_SITES and total["status"] == "2/3 sites"
    assert total["train_persons"] == 40 and total["train_loss"] == pytest.approx((30 * 0.2 + 10 * 0.6) / 40)
    assert total["val_person_auc"] == pytest.approx((10 * 0.9 + 30 * 0.5) / 40)


def test_sites_with_other_classes_are_named():
    same = {"class_names": ["normal", "plaque"], "positive_class": "plaque"}
    other = {"class_names": ["normal", "stenosis"], "positive_class": "stenosis"}
    assert check_classes({"a": same, "b": dict(same)}) == (["normal", "plaque"], "plaque")
    with pytest.raises(UserError, match=r"site b has classes \['normal', 'stenosis'\], site a has"):
        check_classes({"a": same, "b": other})


def test_the_coordinators_files_are_ordinary_model_files_and_resume_from_the_last_round(tmp_path):
    cfg = TrainConfig(model="small_cnn", image_size=32)
    persons = {"train": [2, 2], "val": [1, 1], "test": [0, 0]}
    summaries = {"a": {"class_names": ["normal", "plaque"], "positive_class": "plaque", "persons": persons}}
    run = CoordinatorRun.create(str(tmp_path), "fed_20260101_000000", cfg, Federation(rounds=3), summaries)
    model, _ = build_run_model(cfg, ["normal", "plaque"])
    weights = model.state_dict()
    good = {"status": "ok", "train_persons": 4, "train_loss": 0.5, "val_persons": 2, "val_person_auc": 0.75}
    assert run.end_round(1, {"a": good}, weights).get("best")
    second = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    assert not run.end_round(2, {"a": good | {"val_person_auc": 0.5}}, second).get("best")
    best, final = ModelFile.load(run.paths.best_model), ModelFile.load(run.paths.final_model)
    assert (best.epoch, final.epoch) == (1, 2) and best.class_names == ["normal", "plaque"]
    assert best.metrics["val_person_auc"] == 0.75 and best.threshold == 0.5

    again, fed, _ = CoordinatorRun.reopen(run.paths.path)
    last, resumed = again.last_round()
    assert last == 2 and fed.rounds == 3 and set(resumed) == set(weights)
    assert all(torch.equal(resumed[k], second[k]) for k in second)  # round 2's global weights, not round 1's
    assert [r["round"] for r in again.rows] == ["1", "1", "2", "2"]


# ---------------------------------------------------------------------------------------------
# Flower's FedAvg over BatchNorm statistics
# ---------------------------------------------------------------------------------------------


def test_fedavg_averages_batchnorm_statistics_weighted_by_training_persons():
    flwr = pytest.importorskip("flwr")
    del flwr
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords  # what FedAvg.aggregate_train calls

    cfg = TrainConfig(model="resnet18", image_size=32, person_model="frames")  # torchvision's own key names
    model, _ = build_run_model(cfg, ["normal", "plaque"])
    states = []
    for shift, persons in ((1.0, 30), (5.0, 10)):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["bn1.running_mean"] += shift
        state["bn1.num_batches_tracked"] += int(shift)
        states.append((state, persons))
    contents = [RecordDict({"arrays": ArrayRecord(s), "metrics": MetricRecord({"num-examples": n})}) for s, n in states]
    arrays = aggregate_arrayrecords(contents, "num-examples")
    averaged = arrays.to_torch_state_dict()
    assert norm_keys(model) <= set(averaged)  # no statistic dropped
    expected = model.state_dict()["bn1.running_mean"] + (30 * 1.0 + 10 * 5.0) / 40
    assert torch.allclose(averaged["bn1.running_mean"].float(), expected, atol=1e-5)

    load_global(model, averaged, {})  # what a site does with it: integer counters come back as integers
    assert model.bn1.num_batches_tracked.dtype == torch.int64 and int(model.bn1.num_batches_tracked) == 2
    assert torch.allclose(model.bn1.running_mean, expected, atol=1e-5)


def test_under_fedbn_flowers_fedavg_averages_the_rest_and_the_global_weights_keep_their_norm_layers():
    pytest.importorskip("flwr")
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from carotid.federated.server_app import next_global

    cfg = TrainConfig(model="resnet18", image_size=32, person_model="frames")  # torchvision's own key names
    model, _ = build_run_model(cfg, ["normal", "plaque"])
    start, norms = model.state_dict(), norm_keys(model)
    sent = []
    for shift, persons in ((1.0, 30), (5.0, 10)):  # what a FedBN site sends: every layer but its norm layers
        state = {k: v.clone() + shift if v.is_floating_point() else v.clone() for k, v in start.items()}
        sent.append(RecordDict({"arrays": ArrayRecord({k: state[k] for k in set(state) - norms}),
                                "metrics": MetricRecord({"num-examples": persons})}))  # fmt: skip
    averaged = aggregate_arrayrecords(sent, "num-examples")
    weights = next_global(start, averaged)
    assert set(weights) == set(start) and all(torch.equal(weights[k], start[k]) for k in norms)
    assert torch.allclose(weights["conv1.weight"], start["conv1.weight"] + (30 * 1.0 + 10 * 5.0) / 40, atol=1e-5)

    own = {k: start[k] + 7.0 if start[k].is_floating_point() else start[k] for k in norms}  # a site's kept layers
    load_global(model, weights, own)
    assert torch.equal(model.bn1.running_mean, own["bn1.running_mean"])


# ---------------------------------------------------------------------------------------------
# The loopback's longer start window: only on the pinned Flower
# ---------------------------------------------------------------------------------------------


def test_the_start_window_patch_refuses_another_flower_or_a_moved_constant_naming_the_version(monkeypatch):
    pytest.importorskip("flwr")
    from carotid.federated import patient

    states = patient.check_patience_patch()  # the pinned flwr: the constant is where claim_task reads it
    assert [s.__name__ for s in states] == list(patient.STATES)
    assert all(getattr(s, patient.CONSTANT) == 30 for s in states)  # Flower's own value, not yet changed here

    monkeypatch.setattr(patient, "installed_flower", lambda: "1.43.0")
    with pytest.raises(UserError, match=r"flwr 1\.42\.0, found flwr 1\.43\.0") as raised:
        patient.check_patience_patch()
    assert "pip install 'flwr==1.42.0'" in raised.value.fix

    monkeypatch.setattr(patient, "installed_flower", lambda: patient.FLOWER_VERSION)
    monkeypatch.delattr(states[1], patient.CONSTANT)
    with pytest.raises(UserError, match=r"flwr 1\.42\.0: flwr\.supercore\.corestate\.sql_corestate\.HEARTBEAT"):
        patient.check_patience_patch()
    # On the pinned Flower the wrapper runs Flower's own command.
    said = run_module("carotid.federated.patient", "superlink", "--version")
    assert said.returncode == 0 and "1.42.0" in said.stdout + said.stderr
