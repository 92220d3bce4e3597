"""Compare two evaluations of the same persons: two models, or a model and a reader.

    python -m carotid.compare RUN_A/eval_test_best RUN_B/eval_test_best
    python -m carotid.compare RUN/eval_test_best RUN/eval_test_best_reader_radiologist

DeLong's test of the person-level AUCs, McNemar's tests of sensitivity and specificity (each side at its
own threshold) and paired person-bootstrap CIs of the differences, into DIR/compare.json, with the overlaid
ROC of both (DIR/roc_overlay.png, 95% bands) and the page DIR/compare.html.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from carotid.commands import parse_compare_args
from carotid.core.errors import UserError, run_cli


def default_out(eval_a: str, eval_b: str) -> Path:
    """./compare_<A>_vs_<B>/ from the folder names (with their run folder's name when both are alike)."""
    paths = [Path(folder).resolve() for folder in (eval_a, eval_b)]
    names = [p.name for p in paths]
    if names[0] == names[1]:
        names = [f"{p.parent.name}-{p.name}" for p in paths]
    names = [re.sub(r"[^A-Za-z0-9_.-]+", "_", n) for n in names]
    return Path(f"compare_{names[0]}_vs_{names[1]}")


def compare(argv: Sequence[str] | None) -> int:
    args = parse_compare_args(argv)
    from carotid.core.files import atomic_write_json
    from carotid.core.run_dir import check_output_dir, check_writable
    from carotid.evaluation.compare import align, compare_sides, format_comparison, read_side
    from carotid.report.compare_page import write_compare_page

    if Path(args.eval_a).resolve() == Path(args.eval_b).resolve():
        raise UserError(
            f"A and B are the same folder ({args.eval_a}): a model compared with itself differs by nothing",
            "pass two evaluation folders (e.g. RUN_A/eval_test_best RUN_B/eval_test_best)",
        )
    out = Path(args.out) if args.out else default_out(args.eval_a, args.eval_b)
    check_output_dir(out, "--out")
    a, b, notes = align(read_side(args.eval_a), read_side(args.eval_b), args.shared_persons)
    result = compare_sides(a, b, notes, bootstrap=args.bootstrap, seed=args.seed)
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare.json", result)
    page = write_compare_page(result, a, b, out, n_resamples=args.bootstrap, seed=args.seed)
    print(format_comparison(result))
    print(f"comparison written to {out / 'compare.json'}, {out / 'roc_overlay.png'}; page: {page}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(compare, argv)


if __name__ == "__main__":
    sys.exit(main())
