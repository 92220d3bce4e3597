"""(k) A person model's bag step against a frame model's step on the same frames, for scripts/benchmark.py.

Both go through carotid.training.engine.train_one_epoch on one synthetic uint8 batch already on the device
(as the compute ceiling (a)): the frame step is the frame classifier, loss per frame; the bag step is
carotid.model.person.PersonModel (the same architecture as its frame encoder, gated attention), the batch's
frames split into persons of --bag-size frames, loss per person. The figure is frames per second of each and
their ratio (target >= 0.9: pooling adds a small MLP and a (frames x persons) mask to the same encoder work).
The two sides alternate, each keeping its fastest epoch, so a busy neighbour slows both alike.

    python scripts/bench_bags.py --image-size 64 --batch-size 64 --epochs 3      # (k) alone, benchmark.py's options
"""

from __future__ import annotations

import sys

BAG_SIZE = 8  # frames per person in the bag step (carotid.train's --bag-size default)


def step_batches(batch_size: int, bag_size: int, image_size: int, device) -> tuple[tuple, tuple]:
    """(frame batch, bag batch) of the same uint8 frames: the frame batch labels each frame with its person's
    label; the bag batch has a label per person and `bag`, the person of each frame."""
    import torch

    persons = max(batch_size // bag_size, 1)
    n = persons * bag_size
    frames = torch.randint(0, 256, (n, 1, image_size, image_size), dtype=torch.uint8, device=device)
    bag = torch.arange(persons, device=device).repeat_interleave(bag_size)
    person_labels = torch.arange(persons, device=device) % 2
    index, status = torch.arange(n, device=device), torch.ones(n, dtype=torch.bool, device=device)
    return (frames, person_labels[bag], index, status), (frames, person_labels, index, status, bag)


def bag_vs_frame_step(args, steps: int, make_trainer, train_epochs, rounds: int = 9) -> dict:
    """Medians over `rounds` rounds of one epoch a side (the order flipping each round, after a warm-up): frames per
    second of each side, frames per CPU second of this process, and the ratios of the two sides within a round,
    so that a neighbour's load, which moves over minutes on a shared machine, falls on both sides of a ratio."""
    import statistics
    import time

    frame_batch, bag_batch = step_batches(args.batch_size, BAG_SIZE, args.image_size, args.accelerator.device)
    sides = {
        "frame": (make_trainer(args, args.compile), frame_batch),
        "bag": (make_trainer(args, args.compile, person_model="attention"), bag_batch),
    }
    for trainer, batch in sides.values():
        train_epochs(trainer, [batch] * min(steps, 3), 1)  # warm-up
    wall: dict[str, list[float]] = {"frame": [], "bag": []}
    cpu: dict[str, list[float]] = {"frame": [], "bag": []}
    for k in range(rounds):
        for side in ("frame", "bag") if k % 2 == 0 else ("bag", "frame"):
            trainer, batch = sides[side]
            start = time.process_time()
            wall[side].append(train_epochs(trainer, [batch] * steps, 1)[0]["images_per_second"])
            cpu[side].append(steps * len(batch[0]) / max(time.process_time() - start, 1e-9))
    median = statistics.median
    return {
        "frame_step_images_per_second": median(wall["frame"]),
        "bag_step_images_per_second": median(wall["bag"]),
        "frame_step_images_per_cpu_second": median(cpu["frame"]),
        "bag_step_images_per_cpu_second": median(cpu["bag"]),
        "bag_vs_frame_step_rounds": median(b / f for b, f in zip(wall["bag"], wall["frame"], strict=True)),
        "bag_vs_frame_step_cpu_rounds": median(b / f for b, f in zip(cpu["bag"], cpu["frame"], strict=True)),
        "bag_size": BAG_SIZE,
    }


def main(argv=None) -> int:
    """(k) alone: the two steps and their ratio, with scripts/benchmark.py's options (--model, --image-size,
    --batch-size, --epochs, --device, --mixed-precision)."""
    import os

    import benchmark

    args = benchmark.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported, as benchmark.main
    from carotid.core.runtime import build_accelerator

    args.accelerator, _ = build_accelerator(mixed_precision=args.mixed_precision)
    figures = bag_vs_frame_step(args, 8, benchmark.make_trainer, benchmark.train_epochs)
    f = figures
    print(
        f"{args.model} {args.image_size} px, {args.batch_size} frames a step ({BAG_SIZE} a person): frame step "
        f"{f['frame_step_images_per_second']:.1f} img/s ({f['frame_step_images_per_cpu_second']:.1f} per CPU s), "
        f"bag step {f['bag_step_images_per_second']:.1f} img/s ({f['bag_step_images_per_cpu_second']:.1f} per CPU "
        f"s); bag/frame, median of the rounds' ratios: {f['bag_vs_frame_step_rounds']:.3f} "
        f"({f['bag_vs_frame_step_cpu_rounds']:.3f} in CPU time)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
