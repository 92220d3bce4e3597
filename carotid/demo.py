"""Synthetic longitudinal carotid B-mode frames, so the tool runs with no data at hand.

Each person gets a vessel at their own depth, angle, calibre and gain: a dark lumen between two bright
intima-media walls, in speckle that fades with depth. "plaque" persons have an echogenic bulge growing
from one wall into the lumen; "normal" persons have none. Frames of a person differ by the cardiac
pulsation of the calibre, a small probe drift and fresh speckle.

    python -m carotid.demo --out demo_data [--persons 60 --frames 12 --size 128 --seed 0]
    python -m carotid.demo --out new_persons --persons 10 --seed 1 --first-id 2001   # persons no demo model saw
    python -m carotid.demo --out sparse_data --persons 200 --min-frames 6 --frames 10 --finding-frames 2
    python -m carotid.demo --out fed_data --sites 3 --site-mix noniid [--test-persons 20]

writes demo_data/<person_id>/…/frame_XXX.png, demo_data/label.xlsx (Chinese headers 患者编号 / 诊断) and
demo_data/findings.csv (which frames show the plaque). With --sites N: fed_data/site_1 … site_N (each such a
folder, with a sheet of its own headers), fed_data/test (held-out persons common to all) and fed_data/sites.csv.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from carotid.commands import parse_demo_args
from carotid.core.errors import run_cli
from carotid.core.text import plural


def _main(argv: Sequence[str] | None) -> int:
    args = parse_demo_args(argv, __doc__.split("\n\n")[0])
    if args.sites is not None:
        return _write_sites(args)
    from carotid.data.demo import make_demo_data  # numpy, Pillow, openpyxl: not for --help (PERFORMANCE.md)

    label_path = make_demo_data(
        args.out, args.persons, args.frames, args.size, args.seed, args.finding_frames, args.min_frames, args.first_id
    )
    frames = plural(args.frames, "frame") if args.min_frames is None else f"{args.min_frames}-{args.frames} frames"
    shown = ""
    if args.finding_frames is not None:
        shown = f" (the plaque in {plural(args.finding_frames, 'frame')} of each plaque person)"
    print(f"wrote {plural(args.persons, 'person')} x {frames}{shown} to {args.out} and labels to {label_path}")
    return 0


def _write_sites(args) -> int:
    from carotid.data.demo_sites import make_demo_sites

    written = make_demo_sites(
        args.out,
        args.sites,
        args.persons,
        args.site_mix,
        args.test_persons,
        args.frames,
        args.size,
        args.seed,
        args.min_frames,
    )
    print(f"wrote {args.site_mix} demo sites to {args.out} (who went where: sites.csv)")
    for plan, label_path in written:
        print(
            f"  {plan.name:<7} {plan.kind:<14} {plural(plan.persons, 'person'):>11} ({plan.normal} normal, "
            f"{plan.plaque} plaque)  gain {'mixed' if plan.gain is None else f'{plan.gain:.2f}'}  {label_path}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
