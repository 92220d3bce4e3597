"""Person-level models (--person-model attention|mean): the pooling's guarantees, the model file, training,
evaluation and prediction through the real CLIs."""

from __future__ import annotations

import pytest
import torch

from carotid.model import ARCHITECTURES
from carotid.model.file import ModelFile
from carotid.model.person import PersonModel
from carotid.model.registry import build_model


def _bags(sizes: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), b, dtype=torch.long) for b, n in enumerate(sizes)])


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
