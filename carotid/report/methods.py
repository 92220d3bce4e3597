"""methods.md: a methods paragraph a paper can start from, beside each page (an evaluation, a cross-validation,
a comparison). Every fact in it is read from the files the page was built from — the checklist's filled items
(config.yaml, data_report.json, the model file), metrics.json / cv_metrics.json / compare.json and the
recorded software versions — and a fact that was not recorded is said to be missing, never guessed."""

from __future__ import annotations

from pathlib import Path

from carotid.core.files import atomic_write_text
from carotid.report.checklist import Item

METHOD_TOPICS = (  # checklist topics that make the methods paragraph, in a paper's order
    "Data partitions and their level",
    "Counts per partition and class",
    "Exclusions the tool made",
    "Preprocessing",
    "Model",
    "Training details",
    "Model selection and operating point",
    "Performance metrics with confidence intervals",
    "Calibration",
)
MISSING = "not recorded"


def _sentence(text: str) -> str:
    text = text.strip()
    first = text.split(" ", 1)[0]
    if first.isalpha():  # not a name such as small_cnn or a split written as in the files
        text = text[0].upper() + text[1:]
    return text + ("" if text.endswith(".") else ".")


def _interval(ci: dict | None) -> str:
    return f" (95% CI {ci['low']:.3f}–{ci['high']:.3f})" if ci else ""


def _count(ci: dict | None) -> str:
    return f", {ci['successes']}/{ci['total']}" if ci and "successes" in ci else ""


def results_sentence(result: dict, where: str) -> str:
    """'On the test split (12 persons), the person-level AUC was 0.917 (95% CI …); sensitivity …' from a
    metrics.json (or the out-of-fold section of cv_metrics.json)."""
    person, ci = result.get("person") or {}, (result.get("ci") or {}).get("person") or {}
    parts = []
    for key, label in (
        ("auc", "AUC"),
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("ppv", "PPV"),
        ("npv", "NPV"),
    ):
        value = person.get(key)
        if value is not None:
            interval = ci.get(key)
            detail = f" (95% CI {interval['low']:.3f}–{interval['high']:.3f}{_count(interval)})" if interval else ""
            parts.append(f"{label} {value:.3f}{detail}")
    threshold = result.get("threshold")
    at = (
        f" at a threshold of {threshold:.3f} ({result.get('threshold_source')})" if isinstance(threshold, float) else ""
    )
    return f"{where}, per person{at}: " + "; ".join(parts) + "." if parts else ""


def software_sentence(versions: dict | None) -> str:
    if not versions:
        return f"Software versions: {MISSING}."
    listed = ", ".join(f"{name} {version}" for name, version in versions.items() if name != "git_commit")
    commit = versions.get("git_commit")
    return f"{listed}" + (f" (carotid commit {commit})" if commit else "") + "."


def methods_markdown(title: str, items: list[Item], results: str, extra: list[str], versions: dict | None) -> str:
    """The file's text: the filled topics as paragraphs, the results, the software, and the topics left to
    the researcher."""
    by_topic = {item.topic: item for item in items}
    lines = [f"# {title}", "", "Drafted from this folder's files; every number is copied from them.", ""]
    for topic in METHOD_TOPICS:
        item = by_topic.get(topic)
        if item is not None:
            lines += [f"**{topic}.** {_sentence(item.text) if item.text else MISSING + '.'}", ""]
    lines += [*(f"{line}\n" for line in extra)]
    if results:
        lines += [f"**Results.** {results}", ""]
    lines += [f"**Software.** {software_sentence(versions)}", ""]
    left = [item for item in items if item.text is None]
    if left:
        lines += ["## For the authors to write", ""]
        lines += [f"- {item.topic}: {item.hint or 'not recorded by the tool'}" for item in left]
    return "\n".join(lines).rstrip() + "\n"


def write_methods(
    folder: Path, title: str, items: list[Item], results: str, versions: dict | None, extra: list[str] | None = None
) -> Path:
    path = folder / "methods.md"
    atomic_write_text(path, methods_markdown(title, items, results, extra or [], versions))
    return path


def weights_sentence(weights: dict | None) -> str:
    """**Initial weights.** from config.yaml's initial_weights (file, SHA-256, size), or that it was not recorded."""
    if not weights:
        return f"**Initial weights.** {MISSING.capitalize()}."
    if weights.get("source") == "file":
        return (
            f"**Initial weights.** The file {Path(weights['file']).name} (SHA-256 {weights['sha256']}, "
            f"{weights['bytes']} bytes)."
        )
    return f"**Initial weights.** {_sentence(weights['source'])}"


def compare_methods(result: dict) -> str:
    """methods.md of a comparison, from compare.json."""
    method = result["method"]
    lines = [
        f"# Comparison of {len(result['models'])} models",
        "",
        "Drafted from compare.json; every number is copied from it.",
        "",
        f"**Persons.** The same {result['n_persons']} persons for every model: {result['counts']['positive']} "
        f"{result['positive_class']} (positive) and {result['counts']['negative']} {result['negative_class']}.",
        "",
        "**Models.** " + " ".join(_model_sentence(m) for m in result["models"]),
        "",
        f"**Statistics.** AUC with a {method['auc_ci']} interval; sensitivity, specificity, PPV and NPV at each "
        f"model's own threshold with the {method['proportion_ci']}. Pairwise: {method['auc_test']} for the AUCs "
        f"and {method['rate_test']} for sensitivity and specificity, p-values adjusted by {method['adjustment']}; "
        "a test whose standard error is zero is reported as not estimable.",
        "",
        "**Results.** "
        + " ".join(
            f"{m['name']}: AUC {m['auc']:.3f}{_interval(m['auc_ci'])}, sensitivity "
            f"{_value(m['sensitivity'])}{_interval(m['ci']['sensitivity'])}, specificity "
            f"{_value(m['specificity'])}{_interval(m['ci']['specificity'])}."
            for m in result["models"]
        ),
    ]
    for pair in result["pairs"]:
        auc = pair["auc"]
        p = (
            "not estimable"
            if auc["p_value"] is None
            else f"p = {auc['p_value']:.4f}, Holm-adjusted {auc['p_holm']:.4f}"
        )
        lines.append(f"{pair['a']} vs {pair['b']}: AUC difference {auc['difference']:+.3f} (DeLong, {p}).")
    subgroups = result.get("subgroups")
    if subgroups:
        lines += [
            "",
            f"**Subgroups.** Each model's person AUC per value of {', '.join(subgroups['columns'])} (columns of "
            f"the label sheet {Path(subgroups['label_excel']).name}), with the {method['auc_ci']} interval within "
            f"each subgroup; subgroups of fewer than {subgroups['min_persons']} persons or of one class are marked "
            "small (tables/compare_subgroups, forest_plot.csv).",
        ]
    return "\n".join(lines) + "\n"


def _value(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _model_sentence(model: dict) -> str:
    d = model["description"]
    size = f"input {d['image_size']} px" if d["image_size"] else f"input size {MISSING}"
    epochs = f"{d['epochs']} epochs" if d["epochs"] else f"epochs {MISSING}"
    return (
        f"{model['name']}: {d['backbone'] or MISSING}, person model {d['person_model'] or MISSING}, {size}, initial "
        f"weights {d['weights'] or MISSING}, {epochs} (best epoch {d['best_epoch'] or MISSING})."
    )
