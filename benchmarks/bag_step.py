"""A person model's bag step against a frame step on the same frames, through
carotid.training.engine.train_one_epoch on one synthetic uint8 batch already on the device: the frame step is
the frame classifier (loss per frame), the bag step carotid.model.person.PersonModel around the same
architecture (gated attention, the batch's frames in persons of BAG_SIZE, loss per person). Rounds of one
epoch a side, interleaved; the ratio is bag frames/s over frame frames/s (target ≥ 0.9), at 64 and 224 px."""

from __future__ import annotations

from benchmarks.common import BAG_SIZE, Options, Row, epoch_seconds, interleaved, make_trainer, pair_row, step_batches

TITLE = "bag step vs frame step"


def compare(opts: Options, image_size: int, batch_size: int, steps: int, accelerator) -> Row:
    frame_batch, bag_batch = step_batches(batch_size, image_size, accelerator.device)
    frame = make_trainer(opts.model, image_size, accelerator)
    bag = make_trainer(opts.model, image_size, accelerator, person_model="attention")
    for trainer, batch in ((frame, frame_batch), (bag, bag_batch)):
        epoch_seconds(trainer, [batch] * 2)  # warm-up
    frames = steps * len(frame_batch[0])
    a, b = interleaved(
        max(opts.pairs, 3),
        lambda: frames / epoch_seconds(frame, [frame_batch] * steps),
        lambda: frames / epoch_seconds(bag, [bag_batch] * steps),
    )
    return pair_row(
        f"bag step vs frame step, {opts.model} {image_size} px, {len(frame_batch[0])} frames a step",
        "frame step", f"bag step ({BAG_SIZE} a person)", "frames/s", a, b, "≥ 0.9",
    )  # fmt: skip


def run(opts: Options) -> list:
    from carotid.core.runtime import build_accelerator

    accelerator, _ = build_accelerator(mixed_precision="no")
    sizes = [(32, 16, 2)] if opts.quick else [(64, 64, 8), (224, 32, 3)]
    rows = []
    for image_size, batch_size, steps in sizes:
        row = compare(opts, image_size, batch_size, steps, accelerator)
        row.met = row.ratio is not None and row.ratio >= 0.9
        rows.append(row)
    return rows
