"""Compare two or more evaluations of the same persons: models, or models and readers.

    python -m carotid.compare RUN_A/eval_test_best RUN_B/eval_test_best RUN_C/eval_test_best
    python -m carotid.compare RUN_A/eval_test_best RUN_B/eval_test_best --name frames --name attention
    python -m carotid.compare RUN/eval_test_best RUN/eval_test_best_reader_radiologist

One table of every model at its own threshold (AUC with its person-bootstrap CI; sensitivity, specificity,
PPV and NPV with Clopper–Pearson CIs; Brier score; calibration slope), pairwise DeLong tests of the AUCs and
McNemar tests of sensitivity and specificity with Holm-adjusted p-values, the overlaid ROC, precision–recall
and decision curves, and with subgroups (--subgroup-column, or those the evaluations recorded) a forest plot of
every model's AUC per subgroup, into DIR/compare.json and the page DIR/compare.html (DIR: --out, else compare/ beside
the first evaluation).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from carotid.commands import CompareOptions, parse_compare_args
from carotid.core.errors import UserError, run_cli


def default_out(first_evaluation: str) -> Path:
    """compare/ beside the first evaluation folder; compare_2/, compare_3/ … when taken."""
    parent = Path(first_evaluation).resolve().parent
    out, number = parent / "compare", 2
    while out.exists():
        out, number = parent / f"compare_{number}", number + 1
    return out


def compare(argv: Sequence[str] | None) -> int:
    args = parse_compare_args(argv)
    from carotid.report.paper import paper_figures

    with paper_figures(args.paper_figures):
        return compare_with(args)


def compare_with(args: CompareOptions) -> int:
    from carotid.core.files import atomic_write_json
    from carotid.core.run_dir import check_output_dir, check_writable
    from carotid.evaluation.compare import align, read_side
    from carotid.evaluation.comparison import compare_models, default_names, format_comparison
    from carotid.evaluation.subgroups import comparison_subgroups
    from carotid.report.compare_page import write_compare_page

    folders = [Path(folder).resolve() for folder in args.evaluations]
    repeated = sorted({str(f) for f in folders if folders.count(f) > 1})
    if repeated:
        raise UserError(
            f"the same evaluation folder is given twice ({repeated[0]}): a model compared with itself differs by "
            "nothing",
            "pass different evaluation folders (e.g. RUN_A/eval_test_best RUN_B/eval_test_best)",
        )
    sides, notes = align([read_side(folder) for folder in args.evaluations], args.shared_persons)
    out = Path(args.out) if args.out else default_out(args.evaluations[0])
    check_output_dir(out, "--out")
    names = args.name or default_names(sides)
    subgroups = comparison_subgroups(
        sides,
        names,
        args.subgroup_column,
        args.label_excel,
        min_persons=args.subgroup_min_persons,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    result = compare_models(sides, names, notes, bootstrap=args.bootstrap, seed=args.seed) | {"subgroups": subgroups}
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare.json", result)
    page = write_compare_page(result, sides, out, n_resamples=args.bootstrap, seed=args.seed)
    print(format_comparison(result))
    if subgroups:
        print(f"subgroups: {', '.join(subgroups['columns'])} ({subgroups['chosen_by']}) of {subgroups['label_excel']}")
        print("\n".join([f"  {n}" for n in subgroups["read"]] + [f"warning: {n}" for n in subgroups["notes"]]))
    folders = "tables/, figures/" if args.paper_figures else "tables/"
    print(f"comparison written to {out}: compare.json, {folders}; page: {page}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(compare, argv)


if __name__ == "__main__":
    sys.exit(main())
