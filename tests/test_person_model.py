"""Person-level models (--person-model attention|mean): the pooling's guarantees, the model file, training,
evaluation and prediction through the real CLIs."""

from __future__ import annotations

import csv
import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from carotid import evaluate, predict
from carotid.model import ARCHITECTURES
from carotid.model.file import ModelFile
from carotid.model.person import PersonModel
from carotid.model.registry import build_model
from tests.conftest import FAST, load_model, make_data, only_run_dir, run_module, train_in_process, write_xlsx
from tests.test_resume import launch, wait_for
from tests.test_resume import rows as resume_rows


def _bags(sizes: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), b, dtype=torch.long) for b, n in enumerate(sizes)])


def _steps(sampler, persons_per_step: int) -> list[list[int]]:
    order = [person for person, _ in sampler]
    return [order[i : i + persons_per_step] for i in range(0, len(order), persons_per_step)]


def test_stratified_steps_hold_every_class_and_each_person_once_an_epoch():
    from carotid.data.bags import BagSampler

    labels = [0] * 72 + [1] * 48  # 120 training persons, 60/40; a step of 4 persons
    single_class = {True: 0, False: 0}
    for stratified in (True, False):
        for epoch in range(5):
            sampler = BagSampler(labels, generator=torch.Generator().manual_seed(epoch), stratified=stratified)
            steps = _steps(sampler, 4)
            assert sorted(p for step in steps for p in step) == list(range(120))  # each person once
            single_class[stratified] += sum(len({labels[p] for p in step}) == 1 for step in steps)
    assert single_class[True] == 0
    assert single_class[False] > 5  # a plain shuffle: about one step in 7 is all one class
    balanced = BagSampler(labels, balanced=True, generator=torch.Generator().manual_seed(0), stratified=True)
    assert all(len({labels[p] for p in step}) == 2 for step in _steps(balanced, 4)[:-1])


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_attention_sums_to_one_over_each_persons_frames(pooling):
    torch.manual_seed(0)
    model = PersonModel("small_cnn", 2, 1, pooling=pooling).eval()
    sizes = [3, 1, 5, 2]
    bag = _bags(sizes)
    with torch.no_grad():
        logits, attention = model(torch.randn(len(bag), 1, 32, 32), bag, len(sizes))
    assert logits.shape == (4, 2) and attention.shape == (len(bag),)
    sums = torch.zeros(len(sizes)).index_add_(0, bag, attention)
    assert torch.allclose(sums, torch.ones(len(sizes)), atol=1e-6)
    assert (attention > 0).all()
    if pooling == "mean":
        assert torch.allclose(attention, 1.0 / torch.tensor(sizes, dtype=torch.float32)[bag])
    else:
        assert attention[:3].std() > 0  # learned weights, not uniform


def test_shuffling_a_persons_frames_leaves_its_probability_unchanged():
    torch.manual_seed(1)
    model = PersonModel("small_cnn", 2, 1).eval()
    frames, bag = torch.randn(9, 1, 32, 32), _bags([4, 5])
    order = torch.randperm(9)
    with torch.no_grad():
        probs, attention = model(frames, bag, 2)
        shuffled_probs, shuffled_attention = model(frames[order], bag[order], 2)
    assert torch.allclose(probs.softmax(1), shuffled_probs.softmax(1), atol=1e-5)
    assert torch.allclose(attention[order], shuffled_attention, atol=1e-6)


def test_a_persons_probability_does_not_depend_on_the_other_persons_of_its_batch():
    """In eval mode, with an encoder that has BatchNorm (resnet18): each frame's embedding is its own."""
    torch.manual_seed(2)
    model = PersonModel("resnet18", 2, 1).eval()
    person = torch.randn(3, 1, 32, 32)
    others = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        alone = model(person, _bags([3]), 1)[0].softmax(1)
        together = model(torch.cat([others[:2], person, others[2:]]), torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2]), 3)
    assert torch.allclose(alone[0], together[0].softmax(1)[1], atol=1e-5)


def test_attention_dropout_and_top_frame_masking_act_in_training_only():
    """Evaluation, predict and ONNX rebuild the model from its file without them: in eval mode it must not matter."""
    torch.manual_seed(3)
    stabilised = PersonModel("small_cnn", 2, 1, attention_dropout=0.5, mask_top_frames=2)
    plain = PersonModel("small_cnn", 2, 1)
    plain.load_state_dict(stabilised.state_dict())  # no weights of their own
    frames, bag = torch.randn(9, 1, 32, 32), _bags([4, 1, 4])
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(stabilised.eval()(frames, bag, 3), plain.eval()(frames, bag, 3)))
        stabilised.train()
        draws = [stabilised(frames, bag, 3)[1] for _ in range(20)]
    dropped = torch.stack([d == 0 for d in draws])  # (draws, frames): a masked frame has no weight
    assert dropped.any() and not dropped[:, 4].any(), "a person's only frame is never masked"
    per_person = torch.stack([dropped[:, :4].sum(1), dropped[:, 5:].sum(1)])
    assert per_person.max() <= 2 and (per_person < 4).all(), "at most the top 2 masked, never all of a person"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_is_a_frame_encoder_of_a_person_model(arch):
    model = PersonModel(arch, 3, 3).eval()
    with torch.no_grad():
        embeddings = model.encode(torch.randn(2, 3, 64, 64))
        logits, attention = model.pool(embeddings, torch.tensor([0, 0]), 1)
    assert embeddings.shape == (2, model.embedding_size) and logits.shape == (1, 3)
    assert model.embedding_size > 2  # the head's input, not a stray 2-class head kept from building it


def _model_file(model, person_model: str) -> ModelFile:
    return ModelFile(
        state_dict=model.state_dict(),
        arch="small_cnn",
        class_names=["normal", "plaque"],
        in_channels=1,
        image_size=32,
        normalization={"mean": [0.5], "std": [0.25]},
        positive_index=1,
        person_model=person_model,
        bag_size=8,
    )


def test_model_file_records_the_person_model_and_builds_it(tmp_path):
    model = PersonModel("small_cnn", 2, 1, pooling="attention")
    _model_file(model, "attention").save(tmp_path / "m.pth")
    loaded = ModelFile.load(tmp_path / "m.pth")
    assert (loaded.person_model, loaded.bag_size, loaded.person_level) == ("attention", 8, True)
    rebuilt = loaded.build_model()
    assert isinstance(rebuilt, PersonModel) and not rebuilt.training
    frames, bag = torch.randn(4, 1, 32, 32), _bags([4])
    with torch.no_grad():
        assert torch.equal(rebuilt(frames, bag, 1)[0], model.eval()(frames, bag, 1)[0])


def test_a_model_file_whose_weights_are_not_its_person_model_is_refused(tmp_path):
    from carotid.core.errors import UserError

    frame_model = build_model("small_cnn", 2, 1)
    _model_file(frame_model, "attention").save(tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="does not fit"):
        ModelFile.load(tmp_path / "wrong.pth")


def test_model_files_of_format_4_load_as_frame_models(tmp_path):
    model = build_model("small_cnn", 2, 1)
    data = _model_file(model, "frames").to_dict()
    for key in ("person_model", "bag_size"):
        del data[key]
    data["format_version"] = 4
    torch.save(data, tmp_path / "old.pth")
    loaded = ModelFile.load(tmp_path / "old.pth")
    assert (loaded.person_model, loaded.person_level, loaded.format_version) == ("frames", False, 4)
    assert not isinstance(loaded.build_model(), PersonModel)


# ---------------------------------------------------------------------------------------------
# Through the CLIs
# ---------------------------------------------------------------------------------------------


def _csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _person_probs(folder) -> dict[str, float]:
    return {r["person_id"]: float(r["prob_plaque"]) for r in _csv(folder / "person_predictions.csv")}


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory):
    """A 2-epoch attention run on 12 persons x 5 frames: 6 frames a step, 2 persons with up to 3 frames each."""
    root, label = make_data(tmp_path_factory.mktemp("mil") / "frames", persons=12, frames=5, size=40)
    output = tmp_path_factory.mktemp("mil_run")
    args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(output), "--epochs", "2"]
    args += [*FAST, "--batch-size", "6", "--bag-size", "3", "--person-model", "attention"]
    args += ["--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25"]
    assert train_in_process(*args) == 0
    return only_run_dir(output)


def test_attention_run_writes_a_person_model_and_its_attention(attention_run):
    model_file = ModelFile.load(attention_run / "models" / "best_model.pth")
    assert (model_file.person_model, model_file.bag_size) == ("attention", 3)
    log = (attention_run / "train.log").read_text(encoding="utf-8")
    assert "batch: 2 persons per step per process (--batch-size 6 frames / 3 frames per training person" in log
    assert "person order: each training step's persons dealt from every class in its share" in log
    header = (attention_run / "metrics.csv").read_text(encoding="utf-8").splitlines()
    rows = _csv(attention_run / "metrics.csv")
    assert len(header) == 3 and all(r["val_person_auc"] != "" and r["val_auc"] == "" for r in rows)
    evaluation = attention_run / "eval_test_best"
    frames = _csv(evaluation / "predictions.csv")
    assert frames and all(r["prob_plaque"] == "" and r["predicted_label"] == "" for r in frames)
    totals: dict[str, float] = {}
    for r in frames:
        totals[r["person_id"]] = totals.get(r["person_id"], 0.0) + float(r["attention"])
    assert totals.keys() == _person_probs(evaluation).keys()
    assert all(abs(t - 1.0) < 1e-4 for t in totals.values())  # six decimals per frame in the table
    persons = _csv(evaluation / "person_predictions.csv")
    assert all(r["n_frames"] == "5" for r in persons)
    metrics = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["image"] is None and metrics["ci"]["image"] is None and metrics["calibration"]["image"] is None
    assert metrics["person_model"] == "attention" and metrics["n_images"] == 5 * len(persons)
    assert "not applicable" in (evaluation / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_one_and_two_evaluation_processes_give_the_same_person_probabilities(attention_run, tmp_path):
    common = ["--run-dir", str(attention_run), "--num-workers", "0", "--batch-size", "4", "--bootstrap", "20"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert evaluate.main([*common, "--split", "val", "--out", str(one)]) == 0
    result = run_module("carotid.evaluate", *common, "--split", "val", "--out", str(two), nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = _person_probs(one), _person_probs(two)
    assert first.keys() == second.keys() and len(first) == 3
    assert all(abs(first[p] - second[p]) < 1e-6 for p in first)
    attention = {(r["path"]): float(r["attention"]) for r in _csv(one / "predictions.csv")}
    # six decimals in the table: the same weight a float's rounding apart can print 1e-6 apart
    assert {r["path"]: float(r["attention"]) for r in _csv(two / "predictions.csv")} == pytest.approx(
        attention, abs=1.5e-6
    )


@pytest.mark.slow
def test_heat_maps_and_report_show_each_persons_frames_by_attention(attention_run, tmp_path):
    out = tmp_path / "eval"
    args = ["--run-dir", str(attention_run), "--out", str(out), "--heatmaps", "2", "--num-workers", "0"]
    assert evaluate.main([*args, "--bootstrap", "20", "--split", "val"]) == 0
    persons = _person_probs(out)
    assert sorted(p.stem for p in (out / "heatmaps").glob("*.png")) == sorted(persons)
    page = (out / "report.html").read_text(encoding="utf-8")
    uniform = {r["person_id"] for r in _csv(out / "person_predictions.csv") if r["attention_uniform"] == "yes"}
    said = page.count("Highest attention first") + page.count("attention is uniform for this person")
    assert said == len(persons)  # once each: gallery or heat-map section
    for person in set(persons) - uniform:
        frames = sorted(
            (
                (float(r["attention"]), Path(r["path"]).name)
                for r in _csv(out / "predictions.csv")
                if r["person_id"] == person
            ),
            reverse=True,
        )
        listed = " · ".join(f"{name} <b>{weight:.3f}</b>" for weight, name in frames)
        assert listed in page, person  # highest first, each with its weight


def test_predict_gives_the_persons_evaluate_gives(attention_run, tmp_path):
    evaluation = attention_run / "eval_test_best"
    folder = tmp_path / "input"
    root = Path(json.loads((attention_run / "data_report.json").read_text(encoding="utf-8"))["root_dir"])
    for person in _person_probs(evaluation):
        shutil.copytree(root / person, folder / person)
    out = tmp_path / "pred.csv"
    args = ["--model", str(attention_run / "models" / "best_model.pth"), "--input", str(folder)]
    assert predict.main([*args, "--out", str(out), "--num-workers", "0", "--batch-size", "3"]) == 0
    persons = {r["person_id"]: float(r["prob_plaque"]) for r in _csv(tmp_path / "pred_persons.csv")}
    assert persons == pytest.approx(_person_probs(evaluation), abs=1e-6)
    assert all(r["attention"] != "" for r in _csv(out))


@pytest.mark.slow
def test_resume_of_a_killed_attention_run_ends_with_the_uninterrupted_weights(tmp_path):
    """Which persons and frames a step holds comes from (seed, epoch): the resumed run skips to the exact step; the
    training-only stabilisers draw from the generators Accelerate's checkpoints restore."""
    data = make_data(tmp_path / "frames", persons=12, frames=6, size=40)
    common = ["--root-dir", str(data[0]), "--label-excel", str(data[1]), "--epochs", "3", "--no-test"]
    common += [*FAST, "--batch-size", "8", "--bag-size", "4", "--person-model", "attention"]
    common += ["--checkpoint-every-steps", "3", "--balanced-sampler"]
    common += ["--attention-dropout", "0.25", "--mask-top-frames", "1"]  # their random draws resume too
    straight = run_module("carotid.train", *common, "--output-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = launch([*common, "--output-dir", str(tmp_path / "killed")], nproc=1)
    # 8 training persons, 2 per step: 4 steps per epoch; checkpoint-00000006 is in epoch 2, after its 2nd step.
    wait_for("train_*/checkpoints/checkpoint-00000006", tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    run_dir = only_run_dir(tmp_path / "killed")
    resumed = run_module("carotid.train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint-" in resumed.stdout
    reference = only_run_dir(tmp_path / "straight")
    assert resume_rows(run_dir) == resume_rows(reference)
    ours, theirs = (load_model(r / "models" / "final_model.pth")["state_dict"] for r in (run_dir, reference))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    best = [ModelFile.load(r / "models" / "best_model.pth") for r in (run_dir, reference)]
    assert best[0].epoch == best[1].epoch and best[0].best_epoch == best[1].best_epoch  # with its tie-break state


def _sparse_finding_data(root: Path, persons: int, seed: int) -> set[str]:
    """Persons of 6-8 noisy 32x32 frames at their own gain; a positive person's finding (a bright square) is in
    1-2 of its frames, its other frames drawn exactly as a negative person's. Returns the finding frames' paths."""
    rng = np.random.default_rng(seed)
    rows, findings = [["ID", "label"]], set()
    for i in range(persons):
        person, positive = f"P{i:03d}", i % 2 == 1
        n = int(rng.integers(6, 9))
        shown = set(rng.choice(n, int(rng.integers(1, 3)), replace=False).tolist()) if positive else set()
        gain = rng.uniform(0.3, 1.0)
        (root / person).mkdir(parents=True)
        for k in range(n):
            frame = gain * (0.35 + 0.15 * rng.standard_normal((32, 32)))
            if k in shown:
                y, x = rng.integers(4, 24, size=2)
                frame[y : y + 8, x : x + 8] = 1.0
                findings.add(str((root / person / f"f{k}.png").resolve()))
            Image.fromarray((np.clip(frame, 0, 1) * 255).astype(np.uint8)).save(root / person / f"f{k}.png")
        rows.append([person, "plaque" if positive else "normal"])
    write_xlsx(root / "label.xlsx", rows)
    return findings


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_on_sparse_findings_the_same_command_with_attention_finds_the_finding_frames_and_beats_frames(tmp_path, seed):
    """One command, --person-model the only difference: --batch-size counts frames for both (issue 30)."""
    # Over a minute per seed (131 s measured at load ~7 on two cores): 2 runs x 8 epochs x ~450 frames. It is a
    # claim about learning, kept at the size it was written and checked with; smaller data or fewer epochs were
    # not measured to keep attention's margin over frames on both seeds.
    findings = _sparse_finding_data(tmp_path / "data", persons=64, seed=seed)
    data = ["--root-dir", str(tmp_path / "data"), "--label-excel", str(tmp_path / "data" / "label.xlsx")]
    common = [*data, "--epochs", "8", "--bootstrap", "0", "--augment", "none", "--lr", "2e-3"]
    common += [*FAST[: FAST.index("--batch-size")], "--num-workers", "0", "--seed", str(seed), "--batch-size", "16"]
    # No validation split: best_model.pth is the lowest training loss, not the first epoch whose validation AUC
    # reached 1.0 on a handful of persons.
    common += ["--train-ratio", "0.75", "--val-ratio", "0", "--test-ratio", "0.25"]
    auc = {}
    for kind in ("attention", "frames"):
        assert train_in_process(*common, "--person-model", kind, "--output-dir", str(tmp_path / kind)) == 0
        evaluation = only_run_dir(tmp_path / kind) / "eval_test_best"
        auc[kind] = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))["person"]["auc"]
    assert auc["attention"] > auc["frames"], auc
    frames = _csv(only_run_dir(tmp_path / "attention") / "eval_test_best" / "predictions.csv")
    top: dict[str, tuple[float, str]] = {}
    for r in frames:
        if r["true_label"] == "plaque":
            top[r["person_id"]] = max(top.get(r["person_id"], (-1.0, "")), (float(r["attention"]), r["path"]))
    on_finding = sum(str(Path(path).resolve()) in findings for _, path in top.values())
    assert on_finding > len(top) / 2, f"{on_finding} of {len(top)} positive persons"
    # Its attention prefers a frame of the persons it calls plaque: no warning that the attention is uniform.
    assert "attention is near uniform" not in (only_run_dir(tmp_path / "attention") / "train.log").read_text("utf-8")


@pytest.mark.slow
def test_cross_validation_of_an_attention_model_pools_its_person_probabilities(tmp_path):
    root, label = make_data(tmp_path / "frames", persons=16, frames=3, size=32)
    args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "cv")]
    args += ["--folds", "2", "--epochs", "1", *FAST, "--batch-size", "4", "--bag-size", "2"]
    args += ["--person-model", "attention", "--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25"]
    assert train_in_process(*args) == 0
    cv_dir = next((tmp_path / "cv").glob("cv_*"))
    metrics = json.loads((cv_dir / "cv_metrics.json").read_text(encoding="utf-8"))
    oof = _csv(cv_dir / "oof_person_predictions.csv")
    assert metrics["out_of_fold"]["image"] is None and metrics["fold_mean_sd"]["image"] is None
    matrix = metrics["out_of_fold"]["person"]["confusion_matrix"]
    assert metrics["n_persons"] == len(oof) == sum(map(sum, matrix)), "each held-out person once, as a person"
    assert metrics["test_ensemble"]["image"] is None
    assert "not applicable" in (cv_dir / "report.html").read_text(encoding="utf-8")
    methods = (cv_dir / "methods.md").read_text(encoding="utf-8")  # the CV's checklist rows, a person model's words
    assert "person probability from attention pooling of its frames' embeddings" in methods
    assert "per person (a person model gives no per-frame probability)" in methods and "of its frames'" in methods


@pytest.mark.slow
def test_two_training_processes_train_an_attention_model(tmp_path):
    """DDP on 2 CPU processes: each takes its own persons' bags; validation evaluates each person once."""
    root, label = make_data(tmp_path / "frames", persons=12, frames=4, size=32)
    args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "out")]
    args += ["--epochs", "2", *FAST, "--batch-size", "6", "--bag-size", "3", "--person-model", "attention"]
    args += ["--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25"]
    result = run_module("carotid.train", *args, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "out")
    assert "x 2 processes" in (run_dir / "train.log").read_text(encoding="utf-8")
    persons = _csv(run_dir / "eval_test_best" / "person_predictions.csv")
    splits = json.loads((run_dir / "splits.json").read_text(encoding="utf-8"))
    assert sorted(r["person_id"] for r in persons) == sorted(splits["test"])
    assert ModelFile.load(run_dir / "models" / "final_model.pth").person_model == "attention"


def test_cached_frames_train_the_same_attention_model_with_temperature_and_operating_point(tmp_path):
    """--cache: bags index the cached dataset by frame; the run equals one that decodes every frame."""
    root, label = make_data(tmp_path / "frames", persons=12, frames=4, size=40)
    args = ["--root-dir", str(root), "--label-excel", str(label), "--epochs", "1", *FAST, "--no-test"]
    args += ["--batch-size", "6", "--bag-size", "3", "--person-model", "attention", "--calibrate", "temperature"]
    args += ["--operating-point", "sensitivity=0.9", "--cache-dir", str(tmp_path / "cache")]
    assert train_in_process(*args, "--output-dir", str(tmp_path / "plain")) == 0
    assert train_in_process(*args, "--cache", "--output-dir", str(tmp_path / "cached")) == 0
    plain, cached = only_run_dir(tmp_path / "plain"), only_run_dir(tmp_path / "cached")
    assert "frames read from the cache" in (cached / "train.log").read_text(encoding="utf-8")
    assert resume_rows(plain) == resume_rows(cached)
    model_file = ModelFile.load(cached / "models" / "best_model.pth")
    assert model_file.temperature is not None and "validation persons" in model_file.temperature_source
    assert [p["name"] for p in model_file.operating_points] == ["sensitivity=0.9"]
