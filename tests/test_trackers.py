"""--report-to through Accelerate's trackers: MLflow's local file store in the run folder (no server), the
metrics of every epoch and the options as parameters; a tracker whose package is missing is one error line."""

from __future__ import annotations

import os

import pytest

from carotid.core.errors import UserError
from carotid.core.trackers import tracker_of
from tests.conftest import FAST, only_run_dir, train_in_process


def test_none_is_no_tracker_and_a_missing_package_is_an_error_with_the_install():
    assert tracker_of(None) is None and tracker_of("none") is None
    with pytest.raises(UserError, match=r"--report-to aim needs the aim package") as error:
        tracker_of("aim")  # not installed here: the suite never installs Aim
    assert "pip install 'aim'" in error.value.fix


@pytest.mark.slow
def test_mlflow_records_every_epoch_in_a_file_store_inside_the_run(data_dir, tmp_path, monkeypatch, capsys):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may be written where the command was started
    root, label = data_dir
    output = tmp_path / "output"
    args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(output), "--epochs", "2"]
    assert train_in_process(*args, "--no-test", *FAST, "--report-to", "mlflow") == 0  # after FAST: its none
    run_dir = only_run_dir(output)
    store = run_dir / "mlruns"
    assert f"tracker mlflow: local file store {store}" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["output"]
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("carotid")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_dir.name and run.data.params["lr"] == "0.001"
    history = client.get_metric_history(run.info.run_id, "val_auc")
    assert [m.step for m in history] == [1, 2]
    assert run.info.status == "FINISHED"
