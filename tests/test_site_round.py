"""A site's round over its own processes (carotid.federated.site_round): the same weights, persons, counts and scores
as in one process, the weights the process group trained, and a site's error as its one `error:` line."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from carotid.core.errors import UserError
from carotid.federated.site_round import EXCHANGE, RoundTask, site_round
from carotid.training.local_round import evaluate_global
from carotid.training.site import open_site
from tests.test_local_round import RUN, accelerator, site_cfg, start_weights

pytestmark = pytest.mark.slow  # each launch of 2 CPU processes (gloo) takes 20-30 s on two cores


def test_a_site_on_two_processes_trains_the_same_persons_and_sends_the_weights_it_trained(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # Without augmentation (random per process) 2 processes x 4 frames are the same steps as 1 process x 8: a frame
    # model (a person model's step takes whole persons, at least 2 a process: test_person_model covers its DDP run).
    cfg = dataclasses.replace(site_cfg(tmp_path, persons=16, person_model="frames"), augment="none", batch_size=8)
    manifest, run_dir = open_site(accelerator(), cfg, RUN)
    start = start_weights(cfg, manifest.class_names)
    task = RoundTask(evaluate=True, train=True, epochs=2)

    one_scores, one = site_round(cfg, RUN, start, task)
    halves = dataclasses.replace(cfg, batch_size=4)
    two_scores, two = site_round(halves, RUN, start, dataclasses.replace(task, round_number=2), processes=2)

    # DDP over 2 processes trained the same weights as one process, to float precision.
    for key in start:
        torch.testing.assert_close(two.weights[key], one.weights[key], rtol=1e-4, atol=1e-5)
    assert max(float((one.weights[k] - start[k]).abs().max()) for k in start if start[k].is_floating_point()) > 1e-3
    assert two.metrics["train_loss"] == pytest.approx(one.metrics["train_loss"], rel=1e-5)

    # The global weights scored on the same validation persons: the same numbers on 1 or 2 processes.
    assert two_scores["val_persons"] == one_scores["val_persons"] == len(manifest.splits["val"])
    assert two_scores["val_loss"] == pytest.approx(one_scores["val_loss"], rel=1e-5)
    assert two_scores["val_person_auc"] == pytest.approx(one_scores["val_person_auc"])
    # The same training persons and frames, counted once each (not once per process).
    assert (two.train_persons, two.train_frames, two.class_persons) == (
        one.train_persons,
        one.train_frames,
        one.class_persons,
    )
    assert two.train_frames == sum(len(manifest.frames[p]) for p in manifest.splits["train"])
    # The weights that came back are the trained ones: scored in one process, they give the loss the group logged.
    assert set(two.weights) == set(start) and any(not torch.equal(two.weights[k], start[k]) for k in start)
    rescored = evaluate_global(accelerator(), cfg, RUN, two.weights)
    assert rescored["val_loss"] == pytest.approx(two.metrics["val_loss"], rel=1e-4)
    # The site's log says how each round ran; nothing of the exchange is left but the request.
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "round 1: 2 local epoch(s) on 1 process(es)" in log
    assert "round 2: 2 local epoch(s) on 2 process(es) (DDP over CPU processes)" in log
    assert sorted(p.name for p in (run_dir / EXCHANGE).iterdir()) == ["request.json"]

    # A site's mistake found in the launched processes is the same error as in one process.
    (tmp_path / "moved").mkdir()
    broken = dataclasses.replace(cfg, root_dir=str(tmp_path / "moved"))
    with pytest.raises(UserError) as alone:
        site_round(broken, RUN, start, RoundTask(evaluate=True))
    with pytest.raises(UserError) as grouped:
        site_round(broken, RUN, start, RoundTask(evaluate=True), processes=2)
    assert str(grouped.value) == str(alone.value)
