"""The decoded-frame cache: whole passes of carotid.data.loaders.make_loader over the cached dataset against
the uncached one (JPEG decoding in the loader workers), as the trainer builds them; interleaved passes, after
a first pass of each (worker start, page cache). The build is timed once beside them."""

from __future__ import annotations

import time

from benchmarks.common import Options, Row, interleaved, pair_row, training_dataset

TITLE = "the decoded-frame cache: loader passes, cached vs uncached"


def images_per_second(loader) -> float:
    images, start = 0, time.perf_counter()
    for frames, *_ in loader:
        images += len(frames)
    return images / (time.perf_counter() - start)


def run(opts: Options) -> list:
    from carotid.core.runtime import build_accelerator
    from carotid.data.loaders import frame_dataset, make_loader
    from carotid.data.manifest import collect_persons
    from carotid.data.sheet.labels import read_labels

    root, label = training_dataset(opts)
    items = collect_persons(str(root), read_labels(str(label)), None).frames_of()
    accelerator, _ = build_accelerator(mixed_precision="no")
    uncached = frame_dataset(items, opts.image_size, 1)
    start = time.perf_counter()
    cache_dir = str(opts.work / "cache")
    cached = frame_dataset(items, opts.image_size, 1, cache=True, cache_dir=cache_dir, accelerator=accelerator)
    build = time.perf_counter() - start
    loaders = [
        make_loader(ds, opts.batch_size, train=True, num_workers=opts.num_workers, seed=0, drop_last=True)
        for ds in (uncached, cached)
    ]
    for loader in loaders:
        images_per_second(loader)
    a, b = interleaved(opts.pairs, lambda: images_per_second(loaders[0]), lambda: images_per_second(loaders[1]))
    row = pair_row(
        f"loader, {opts.image_size} px, {opts.num_workers} workers uncached", "no cache", "--cache", "img/s", a, b,
        "≥ 20",
    )  # fmt: skip
    row.met = row.ratio is not None and row.ratio >= 20
    build_row = Row(
        "cache build (all cores)",
        "",
        "--cache build",
        "frames/s",
        b_value=len(items) / build,
        note=f"{len(items)} frames in {build:.2f} s",
    )
    return [row, build_row]
