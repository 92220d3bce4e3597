"""The federated local round (carotid.training.local_round), in process on tiny real data: what leaves a site,
FedAvg's BatchNorm statistics going out and FedBN's staying, FedProx's pull towards the global weights."""

from __future__ import annotations

import json

import pytest
import torch

from carotid.core.runtime import build_accelerator
from carotid.training.config import TrainConfig
from carotid.training.epoch import build_run_model
from carotid.training.local_round import LOCAL_STATE, evaluate_global, local_round, norm_keys
from carotid.training.site import open_site, site_options, summarize
from tests.conftest import make_data

RUN = "fed_20260101_000000"


def site_cfg(tmp_path, model: str = "small_cnn", persons: int = 12, **options) -> TrainConfig:
    root, label = make_data(tmp_path / "hospital" / "frames", persons=persons, frames=3, size=40)
    base = TrainConfig(model=model, image_size=32, batch_size=8, num_workers=0, lr=1e-3, seed=3, **options)
    site = {"root_dir": str(root), "label_excel": str(label), "output_dir": str(tmp_path / "site")}
    return site_options(base, site)


def start_weights(cfg: TrainConfig, class_names: list[str]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model, _ = build_run_model(cfg, class_names)
    return {k: v.clone() for k, v in model.state_dict().items()}


def accelerator():
    return build_accelerator(
        mixed_precision="no", gradient_accumulation_steps=1, report_to=None, dist_timeout_minutes=5, output_dir="."
    )[0]


def test_a_round_returns_new_weights_counts_and_numbers_and_keeps_ids_at_the_site(tmp_path):
    cfg = site_cfg(tmp_path)
    acc = accelerator()
    manifest, run_dir = open_site(acc, cfg, RUN)
    summary = summarize(manifest)
    start = start_weights(cfg, summary.class_names)
    result = local_round(acc, cfg, RUN, start, epochs=2, round_number=1)

    assert set(result.weights) == set(start)
    assert any(not torch.equal(result.weights[k], start[k]) for k in start)
    assert result.train_persons == len(manifest.splits["train"]) == sum(result.class_persons)
    assert result.train_frames == sum(len(manifest.frames[p]) for p in manifest.splits["train"])
    assert result.metrics["val_persons"] == len(manifest.splits["val"]) > 0
    assert result.metrics["train_loss"] > 0 and result.metrics["val_loss"] > 0
    assert 0.0 <= result.metrics["val_person_auc"] <= 1.0
    # Only numbers leave; the persons stay in the site's own run folder.
    assert all(isinstance(v, (int, float)) for v in result.metrics.values())
    splits = json.loads((run_dir / "splits.json").read_text(encoding="utf-8"))
    assert sorted(splits["train"]) == sorted(manifest.splits["train"])
    assert (run_dir / "rounds" / "round_001" / "metrics.csv").is_file()
    assert not (run_dir / "rounds" / "round_001" / "checkpoints").exists()

    # A second round reads the same split back and scores the global weights on the same validation persons.
    scored = evaluate_global(accelerator(), cfg, RUN, result.weights)
    assert scored["val_persons"] == result.metrics["val_persons"]
    assert scored["val_loss"] == pytest.approx(result.metrics["val_loss"], rel=1e-4)


@pytest.mark.slow  # a BatchNorm network (mobilenet_v3_small): about a minute on two cores
def test_fedavg_sends_batchnorm_statistics_and_fedbn_keeps_them_at_the_site(tmp_path):
    cfg = site_cfg(tmp_path, model="mobilenet_v3_small", persons=8)
    acc = accelerator()
    manifest, run_dir = open_site(acc, cfg, RUN)
    start = start_weights(cfg, manifest.class_names)
    model, _ = build_run_model(cfg, manifest.class_names)
    norms = norm_keys(model)
    stats = [k for k in norms if k.endswith("running_mean")]
    assert stats and any(k.endswith("num_batches_tracked") for k in norms)

    fedavg = local_round(acc, cfg, RUN, start, epochs=1)
    assert norms <= set(fedavg.weights)  # the running statistics go out to be averaged, none dropped
    assert all(not torch.equal(fedavg.weights[k], start[k]) for k in stats)
    assert not (run_dir / LOCAL_STATE).exists()

    fedbn = local_round(accelerator(), cfg, RUN, start, epochs=1, round_number=2, keep_local="norm")
    assert not norms & set(fedbn.weights)  # nothing of a norm layer leaves
    kept = torch.load(run_dir / LOCAL_STATE, weights_only=True)
    assert set(kept) == norms

    # The next round's global norm layers are ignored under FedBN: absurd statistics change nothing.
    spoiled = dict(fedbn.weights) | {k: start[k] + 1e3 for k in stats}
    honest = dict(fedbn.weights) | {k: start[k] for k in norms}
    with_kept = evaluate_global(accelerator(), cfg, RUN, spoiled, keep_local="norm")
    assert with_kept["val_loss"] == pytest.approx(
        evaluate_global(accelerator(), cfg, RUN, honest, keep_local="norm")["val_loss"], rel=1e-5
    )
    # Without FedBN the same absurd statistics are used, and the loss shows it.
    site_stats_but_spoiled_means = spoiled | {k: kept[k] for k in norms if k not in stats}
    without = evaluate_global(accelerator(), cfg, RUN, site_stats_but_spoiled_means)
    assert without["val_loss"] != pytest.approx(with_kept["val_loss"], rel=1e-3)


def test_fedprox_keeps_the_weights_near_the_global_ones(tmp_path):
    cfg = site_cfg(tmp_path)
    acc = accelerator()
    manifest, _ = open_site(acc, cfg, RUN)
    start = start_weights(cfg, manifest.class_names)

    def drift(result) -> float:
        return sum(float((result.weights[k].float() - start[k].float()).norm() ** 2) for k in start) ** 0.5

    free = drift(local_round(acc, cfg, RUN, start, epochs=2))
    pulled = drift(local_round(accelerator(), cfg, RUN, start, epochs=2, round_number=2, proximal_mu=50.0))
    assert pulled < 0.5 * free


def test_a_site_whose_folders_are_empty_fails_with_a_user_error_and_leaves_no_folder(tmp_path):
    from carotid.core.errors import UserError

    cfg = site_cfg(tmp_path)
    (tmp_path / "empty").mkdir()
    empty = TrainConfig(**(vars(cfg) | {"root_dir": str(tmp_path / "empty")}))
    with pytest.raises(UserError):
        open_site(accelerator(), empty, RUN)
    assert not (tmp_path / "site" / RUN).exists()
