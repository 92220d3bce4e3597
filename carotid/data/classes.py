"""What a label cell means: normalised text, blanks, spellings of one class, and the positive class.

`normalize_label` turns a cell into text (or None); `merge_spellings` makes values that differ only in case
(or booleans beside 0/1) one class; `choose_positive` picks the positive class of a binary task and says why
(a label that negates the other, such as 非心脏 beside 心脏, is the negative one).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import unicodedata
from collections import Counter
from typing import Any

from carotid.core.errors import UserError

# Dropped before comparing: a zero-width space pasted with a label is invisible in Excel.
ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
# What people type for "not known" (compared case-insensitively): blank, not a class. '无' ("none") and '-' are
# missing marks too, except beside '有' ("present") and '+', where each is the negative half of the pair.
MISSING_MARKS = frozenset(
    {"na", "n/a", "n.a.", "nan", "null", "-", "--", "—", "?", "空", "未知", "不详", "缺失", "无", "unknown"}
)
NEGATIVE_HALF = {"无": "有", "-": "+"}  # mark → the mark beside which it is the negative class
# A label not decided yet (a recheck, a pending report): the person is unlabelled, not a class of their own.
UNDECIDED_MARKS = frozenset(
    {"pending", "recheck", "re-check", "tbd", "to be determined", "undetermined", "indeterminate", "uncertain"}
    | {"待定", "待查", "复查", "待复查", "未定", "不确定", "待确认"}
)
# One yes/no question answered in several spellings ('Y' beside 'Yes', '是' beside 'yes'): two classes, not four.
YES_ANSWERS = frozenset({"yes", "y", "是", "有", "阳性", "阳", "+", "positive", "pos"})
NO_ANSWERS = frozenset({"no", "n", "否", "无", "阴性", "阴", "-", "\u2212", "negative", "neg"})
# Clinically negative and positive labels (compared after casefold, spaces and punctuation dropped).
NEGATIVE_LABELS = frozenset(
    {"negative", "neg", "normal", "no", "n", "false", "0", "healthy", "control", "benign", "absent", "noplaque"}
    | {"阴性", "阴", "正常", "无", "否", "良性", "无斑块", "未见斑块", "健康", "对照", "-", "\u2212"}
)
POSITIVE_LABELS = frozenset(
    {"positive", "pos", "abnormal", "yes", "y", "true", "1", "plaque", "disease", "malignant", "present", "stenosis"}
    | {"阳性", "阳", "有", "是", "斑块", "有斑块", "异常", "恶性", "狭窄", "病变", "+"}
)
EXCEL_ERRORS = frozenset(
    {"#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A", "#GETTING_DATA", "#SPILL!", "#CALC!"}
    | {"#FIELD!", "#BLOCKED!", "#CONNECT!", "#BUSY!", "#UNKNOWN!", "#EXTERNAL!", "#PYTHON!"}
)


def cell_text(value: Any) -> str | None:
    """A cell as text: 1005, 1005.0 and ' 1005 ' all become '1005'; blanks and Excel errors are None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):  # NaN/inf cached from a formula error
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    # NFC: a name typed on one system and copied from macOS folder names on another compare equal.
    text = unicodedata.normalize("NFC", str(value).strip())
    return None if not text or text in EXCEL_ERRORS else text


def normalize_label(value: Any) -> str | None:
    """A label cell as text: NFKC (full-width letters and digits), trimmed, zero-width characters dropped."""
    text = cell_text(value)
    if text is None:
        return None
    text = unicodedata.normalize("NFKC", text).translate(ZERO_WIDTH).strip()
    return text or None


def is_missing_mark(text: str, column: set[str]) -> bool:
    """A blank, given the column's other (case-folded) values: '-' beside '+' is a class, not a blank."""
    key = text.casefold()
    return key in MISSING_MARKS and NEGATIVE_HALF.get(key) not in column


def is_undecided(text: str) -> bool:
    return text.casefold().strip() in UNDECIDED_MARKS


def spelling_key(text: str) -> str:
    """Spellings of one class share this key: case folded; booleans are the 0/1 pair; the spellings of a yes
    (Y, 是, 阳性, +) and of a no answer are one 'yes' and one 'no'."""
    key = text.casefold()
    if key in YES_ANSWERS:
        return "\0yes"
    if key in NO_ANSWERS:
        return "\0no"
    return {"true": "1", "false": "0"}.get(key, key)


def merge_spellings(labels: list[str], known: list[str] | None = None) -> tuple[dict[str, str], list[str]]:
    """({spelling: class name}, warnings). A class is named by its most frequent spelling (or by the `known`
    class name with its key, e.g. the model's); every merge of several spellings is a warning."""
    counts = Counter(labels)
    groups: dict[str, list[str]] = {}
    for spelling in sorted(counts):
        groups.setdefault(spelling_key(spelling), []).append(spelling)
    preferred = {spelling_key(name): name for name in known or []}
    names, warnings = {}, []
    for key, spellings in groups.items():
        name = preferred.get(key) or max(spellings, key=lambda s: (counts[s], -spellings.index(s)))
        names.update(dict.fromkeys(spellings, name))
        if len(spellings) > 1:
            listed = ", ".join(f"'{s}' ({counts[s]})" for s in sorted(spellings, key=lambda s: -counts[s]))
            why = "spell one yes/no answer" if key.startswith("\0") else "differ only in case or are TRUE/1, FALSE/0"
            warnings.append(f"labels {listed} are one class '{name}' (they {why})")
    return names, warnings


def sorted_classes(names: set[str]) -> list[str]:
    def number(name: str) -> float | None:
        try:
            return float(name)
        except ValueError:
            return None

    if all(number(n) is not None for n in names):
        return sorted(names, key=lambda n: (number(n), n))
    return sorted(names)


def _meaning_key(name: str) -> str:
    text = unicodedata.normalize("NFKC", name).casefold()
    return re.sub(r"[\s_\-.()（）]+", "", text) or text.strip()  # a bare '-' stays '-' (the negative of '+')


# A label that negates another one: 非X, 无X, 不X, non-X, no X, not X, X-negative, X阴性 is the negative of X.
NEGATION_PREFIX = re.compile(r"^(?:非|无|不|non[\s\-_]*|no[\s\-_]+|not[\s\-_]+)(?P<stem>.+)$")
NEGATION_SUFFIX = re.compile(r"^(?P<stem>.+?)[\s\-_]*(?:negative|阴性)$")


def negates(label: str, other: str) -> bool:
    """Whether `label` is the negation of `other` ('非心脏' of '心脏', 'plaque-negative' of 'plaque')."""
    text = unicodedata.normalize("NFKC", label).casefold().strip()
    target = _meaning_key(other)
    return any(
        found is not None and _meaning_key(found.group("stem")) == target
        for found in (NEGATION_PREFIX.match(text), NEGATION_SUFFIX.match(text))
    )


def positive_index(class_names: list[str], positive_class: str | None) -> int:
    """The index of the class whose probability is scored: the positive class `choose_positive` chose (binary), else
    the last class. The one rule: training, every fold, the out-of-fold metrics and the CV page all call it."""
    return class_names.index(positive_class) if positive_class in class_names else len(class_names) - 1


def choose_positive(class_names: list[str], wanted: str | None) -> tuple[str | None, str, bool]:
    """(positive class, why, whether the user must be warned). None for more than two classes."""
    if wanted is not None:
        matches = [n for n in class_names if n == wanted] or [
            n for n in class_names if spelling_key(n) == spelling_key(wanted)
        ]
        if not matches:
            raise UserError(
                f"--positive-class '{wanted}' is not a class; the classes are {class_names}", "pass one of them"
            )
        return matches[0], "from --positive-class", False
    if len(class_names) != 2:
        return None, f"none: {len(class_names)} classes (sensitivity and AUC are per class)", False
    keys = [_meaning_key(n) for n in class_names]
    negative = [k in NEGATIVE_LABELS for k in keys]
    positive = [k in POSITIVE_LABELS for k in keys]
    a, b = class_names
    for label, other in ((a, b), (b, a)):
        if negates(label, other):
            return other, f"'{label}' is the negation of '{other}', so '{other}' is positive", False
    if negative == [True, False] and positive[1] or negative == [False, True] and positive[0]:
        pick = b if positive[1] else a
        return pick, f"recognised pair: '{pick}' is positive, '{a if pick == b else b}' negative", False
    if negative.count(True) == 1:
        pick = b if negative[0] else a
        return pick, f"'{a if pick == b else b}' is a recognised negative label", False
    if positive.count(True) == 1:
        pick = a if positive[0] else b
        return pick, f"'{pick}' is a recognised positive label", False
    return (
        class_names[-1],
        f"the last class in sorted order: neither '{a}' nor '{b}' is a recognised positive or negative label "
        "(pass --positive-class to choose)",
        True,
    )
