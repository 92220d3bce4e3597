"""Property tests: the label reader over generated sheets, the person split over generated cohorts.

What the generated sheets hold: ints (small pools, so IDs repeat, and 16-digit ones), floats (integral ones
like 1005.0, fractions, NaN and inf, which openpyxl stores as empty cells), text (padded with spaces, tabs,
the ideographic space U+3000 and no-break spaces; Chinese; any printable unicode), blanks (None), booleans,
dates and datetimes, error values (#N/A, #DIV/0!) and formulas. openpyxl writes a formula ('=…') without a
result and computes nothing, so reading with data_only=True gives None, exactly as a file saved without
recalculation would; `cache_formula_results` rewrites chosen cells the way Excel saves them, a formula
*with* its cached result (`<c><f>…</f><v>1005</v></c>`), which is what carotid reads.

The oracle is written from the documented contract (DESIGN.md, data contract; issue 10), not from the code:
an ID is matched as text; spaces around it are dropped; an integral number 1005 or 1005.0 is "1005";
empty cells and Excel errors are empty; a label is also NFKC-normalised with zero-width characters dropped,
and a missing-value mark (NA, -, 未知 …; the list is the contract's MISSING_MARKS) is empty; labels that differ
only in case, or TRUE/1 and FALSE/0, are one class; rows without an ID or a label are skipped; the same ID
with two classes is an error; fewer than two classes is an error; a formula without a stored result in the
ID or label column is an error.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import unicodedata
import zipfile
from collections import Counter
from pathlib import Path

import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carotid.core.errors import UserError
from carotid.data.classes import MISSING_MARKS, ZERO_WIDTH
from carotid.data.sheet.labels import EXCEL_ERRORS, read_labels
from carotid.data.split import split_persons

# 100 examples each keep the file under ~15 s; CAROTID_FUZZ_EXAMPLES=2000 fuzzes longer.
SETTINGS = settings(
    max_examples=int(os.environ.get("CAROTID_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ERRORS = ("#N/A", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?")  # generated; the oracle knows them all (EXCEL_ERRORS)
PADDING = st.sampled_from(["", " ", "  ", "\t", "\u3000", "\xa0", " \n"])
CHINESE = st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x4FFF), min_size=1, max_size=4)
# openpyxl refuses the control characters XML 1.0 cannot hold; \r becomes \n in XML, so it is left out too.
PRINTABLE = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)


def padded(text):
    return st.builds(lambda a, t, b: a + t + b, PADDING, text, PADDING)


ID_CELLS = st.one_of(
    st.integers(1000, 1012),  # repeats: duplicate rows
    st.integers(1000, 1012).map(float),  # 1005.0, the same person as 1005
    padded(st.integers(1000, 1012).map(str)),  # " 1005 " typed as text
    st.integers(10**15, 10**16),  # beyond Excel's 15 digits
    st.floats(allow_nan=True, allow_infinity=True),
    padded(CHINESE),
    padded(PRINTABLE),
    st.none(),
    st.booleans(),
    st.dates(dt.date(1950, 1, 1), dt.date(2050, 1, 1)),
    st.datetimes(dt.datetime(1950, 1, 1), dt.datetime(2050, 1, 1)),
    st.sampled_from(ERRORS),
    st.just("=A1+1"),
)
LABEL_CELLS = st.one_of(
    st.sampled_from(["normal", "plaque", " plaque ", "斑块", "正常", 0, 1, 1.0, 2, True, None, "", " ", "=B2", "#N/A"]),
    padded(CHINESE),
    PRINTABLE,
    st.floats(allow_nan=True, allow_infinity=True),
)


# ---------------------------------------------------------------------------------------------
# Writing generated sheets
# ---------------------------------------------------------------------------------------------


def write_sheet(path: Path, rows: list[list], cached: set[tuple[int, int]] = frozenset()) -> Path:
    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    book.save(path)
    if cached:
        cache_formula_results(path, cached)
    return path


def cache_formula_results(path: Path, cells: set[tuple[int, int]]) -> None:
    """Turn the chosen cells (row, column; 1-based) into formulas whose result is cached, as Excel saves them.

    The cell keeps its value as the cached result (`<v>`); text becomes t="str" as Excel writes it."""
    with zipfile.ZipFile(path) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    xml = parts["xl/worksheets/sheet1.xml"].decode("utf-8")

    def rewrite(match: re.Match) -> str:
        ref, kind, body = match.group(1), match.group(2), match.group(3)
        text = re.search(r"<t[^>]*>(.*?)</t>", body, re.S)
        if kind == "inlineStr" and text:
            return f'<c r="{ref}" t="str"><f>T("x")</f><v xml:space="preserve">{text.group(1)}</v></c>'
        if "<v>" in body:
            return f'<c r="{ref}" t="{kind}"><f>N(1)</f>{body}</c>'
        return match.group(0)

    refs = {f"{openpyxl.utils.get_column_letter(c)}{r}" for r, c in cells}
    xml = re.sub(
        r'<c r="([A-Z]+\d+)"(?: t="(\w+)")?[^>/]*>(.*?)</c>',
        lambda m: rewrite(m) if m.group(1) in refs else m.group(0),
        xml,
        flags=re.S,
    )
    parts["xl/worksheets/sheet1.xml"] = xml.encode("utf-8")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)


def as_read(path: Path) -> list[list]:
    """The cell values a reader gets (data_only: a formula's cached result, None when there is none)."""
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    rows = [list(r) for r in book.active.iter_rows(values_only=True)]
    book.close()
    return rows


# ---------------------------------------------------------------------------------------------
# The contract, written out
# ---------------------------------------------------------------------------------------------


def contract_id(value) -> str | None:
    if value is None or isinstance(value, dt.time):
        return None if value is None else str(value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    text = unicodedata.normalize("NFC", str(value).strip())
    return None if text == "" or text in EXCEL_ERRORS else text


def contract_label(value, present: bool) -> str | None:
    text = contract_id(value)
    if text is None:
        return None
    text = unicodedata.normalize("NFKC", text).translate(ZERO_WIDTH).strip()
    if not text or (text.casefold() in MISSING_MARKS and not (text == "无" and present)):
        return None
    return text


def class_key(label: str) -> str:
    return {"true": "1", "false": "0"}.get(label.casefold(), label.casefold())


def expected_table(rows: list[list]) -> tuple[dict[str, str], list[str]]:
    """({ID: class key}, IDs that have two different classes) for data rows of [ID, label, ...]."""
    present = any(len(r) > 1 and contract_id(r[1]) is not None and contract_id(r[1]).casefold() == "有" for r in rows)
    labels, conflicts = {}, []
    for row in rows:
        person = contract_id(row[0]) if row else None
        label = contract_label(row[1], present) if len(row) > 1 else None
        if person is None or label is None:
            continue
        if person in labels and labels[person] != class_key(label):
            conflicts.append(person)
        labels.setdefault(person, class_key(label))
    return labels, conflicts


def blank_id_column(rows: list[list]) -> bool:
    """No ID in any row beside a label cell that is not blank (a missing-value mark counts as written)."""
    labelled = any(
        len(r) > 1
        and (t := contract_id(r[1])) is not None
        and unicodedata.normalize("NFKC", t).translate(ZERO_WIDTH).strip()
        for r in rows
    )
    return labelled and all(contract_id(r[0]) is None for r in rows if r)


def uncached_formulas(written: list[list], read: list[list]) -> bool:
    """Whether an ID or label cell was written as a formula and reads back without a result."""
    for row_written, row_read in zip(written[1:], read[1:]):
        for column in (0, 1):
            cell = row_written[column] if column < len(row_written) else None
            got = row_read[column] if column < len(row_read) else None
            if isinstance(cell, str) and cell.startswith("=") and got is None:
                return True
    return False


@SETTINGS
@given(
    body=st.lists(st.tuples(ID_CELLS, LABEL_CELLS), max_size=25),
    cached=st.sets(st.tuples(st.integers(2, 26), st.integers(1, 2)), max_size=6),
)
def test_label_reader_follows_the_contract(tmp_path, body, cached):
    written = [["ID", "label"], *map(list, body)]
    path = write_sheet(tmp_path / "labels.xlsx", written, cached)
    read = as_read(path)
    read += [[]] * (len(written) - len(read))
    rows = [r for r in read[1:] if any(v is not None and str(v).strip() for v in r)]
    want, conflicts = expected_table(rows)
    formulas = uncached_formulas(written, read)
    try:
        table = read_labels(path)
    except UserError as err:
        message = str(err)
        if formulas:
            assert "formula with no stored result" in message, message
        elif blank_id_column(rows):
            assert "is blank in every row" in message, message
        elif conflicts:
            assert "conflicting labels" in message and f"'{conflicts[0]}'" in message
        else:
            assert len(set(want.values())) < 2 and "at least two classes" in message, message
        return
    assert not formulas, "a formula without a stored result was read as an empty cell"
    assert not conflicts, f"conflicting labels for {conflicts} were not reported"
    assert not blank_id_column(rows), "labels beside a blank ID column were not reported"
    assert {person: class_key(label) for person, label in table.labels.items()} == want
    assert sorted(map(class_key, table.class_names)) == sorted(set(want.values())) and len(table.class_names) >= 2
    for person in table.labels:  # IDs are normalised text
        assert isinstance(person, str) and person == person.strip() and person
        assert not re.fullmatch(r"-?\d+\.0", person), "an integral number keeps no '.0'"


CELLS = st.one_of(
    ID_CELLS, LABEL_CELLS, st.text(max_size=3).filter(lambda t: not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", t))
)


@SETTINGS
@given(
    rows=st.lists(st.lists(CELLS, max_size=5), max_size=12),
    columns=st.tuples(
        st.none() | st.sampled_from(["ID", "id", "患者编号", "label", "x", ""]),
        st.none() | st.sampled_from(["label", "诊断", "ID", "y", ""]),
    ),
    sheet=st.none() | st.sampled_from(["Sheet", "Sheet1", "标签"]),
)
def test_label_reader_raises_only_user_errors_on_any_sheet(tmp_path, rows, columns, sheet):
    """Any headers, ragged rows, any cell types, and any choice of sheet and columns: a table or a UserError."""
    path = write_sheet(tmp_path / "any.xlsx", rows)
    try:
        table = read_labels(path, sheet=sheet, id_column=columns[0], label_column=columns[1])
    except UserError as err:
        assert str(err) and "\n" not in err.what
        return
    assert len(table.class_names) >= 2 and set(table.labels.values()) == set(table.class_names)
    assert all(isinstance(p, str) and p == p.strip() and p for p in table.labels)


def test_examples_of_the_contract(tmp_path):
    """Cases named in DESIGN.md, with a formula's cached result and an error value from a failed lookup."""
    rows = [
        ["ID", "label"],
        [1005, "plaque"],
        [1006.0, "normal"],
        [" 1007 ", " Plaque\u200b "],
        ["Jose\u0301", "normal"],
        [1008, "#N/A"],
        [1010, "normal"],
        [1011, "NA"],
        [1012, "plaque"],
    ]
    table = read_labels(write_sheet(tmp_path / "l.xlsx", rows, cached={(7, 1)}))
    assert table.labels == {
        "1005": "plaque",
        "1006": "normal",
        "1007": "plaque",  # ' Plaque\u200b ': spaces and the zero-width space dropped, the majority's spelling
        "José": "normal",
        "1010": "normal",
        "1012": "plaque",
    }
    assert "José" == unicodedata.normalize("NFC", "Jose\u0301")
    assert any("#N/A" in note for note in table.notes), table.notes
    # A lookup never computed (no stored result) is no missing label: the file must be saved by Excel first.
    with pytest.raises(UserError, match=r"B10: =VLOOKUP"):
        read_labels(write_sheet(tmp_path / "m.xlsx", [*rows, [1009, "=VLOOKUP(A6,X!A:B,2)"]]))


# ---------------------------------------------------------------------------------------------
# The person-level split
# ---------------------------------------------------------------------------------------------

PERSON_IDS = st.one_of(
    st.integers(0, 10**6).map(str), st.text(min_size=1, max_size=6).map(str.strip).filter(bool), CHINESE
)


@st.composite
def cohorts(draw):
    sizes = draw(st.lists(st.integers(1, 30), min_size=2, max_size=4))
    ids = draw(st.lists(PERSON_IDS, min_size=sum(sizes), max_size=sum(sizes), unique=True))
    classes = [c for c, n in enumerate(sizes) for _ in range(n)]
    draw(st.randoms()).shuffle(classes)
    return dict(zip(ids, classes))


@st.composite
def ratios(draw):
    train = draw(st.integers(1, 100))
    val = draw(st.integers(0, 100 - train))
    return train / 100, val / 100, (100 - train - val) / 100


def stratifiable(counts: Counter, n_out: int) -> bool:
    """scikit-learn's own conditions for a stratified split of `counts` with `n_out` persons taken out."""
    n = sum(counts.values())
    return n_out == 0 or (min(counts.values()) >= 2 and len(counts) <= n_out <= n - len(counts))


@SETTINGS
@given(labels=cohorts(), shares=ratios(), seed=st.integers(0, 2**32 - 1))
def test_split_is_a_partition_and_stratified_where_possible(labels, shares, seed):
    try:
        splits, notes = split_persons(labels, *shares, seed=seed)
    except UserError as err:
        assert "too few" in str(err)
        return
    assert (splits, notes) == split_persons(labels, *shares, seed=seed), "reproducible from the seed"
    placed = splits["train"] + splits["val"] + splits["test"]
    assert sorted(placed) == sorted(labels), "every person in exactly one split"
    assert len(set(placed)) == len(placed), "no person in two splits"
    assert splits["train"], "training is never empty"
    n = len(labels)
    for split, share in zip(("train", "val", "test"), shares):
        if share == 0:
            assert splits[split] == [] or split == "train"
        if split != "train" and share > 0:
            assert abs(len(splits[split]) - share * n) <= 1 or len(splits[split]) == 1, (
                split,
                len(splits[split]),
                share,
                n,
            )

    everyone = Counter(labels.values())
    rest = Counter(labels[p] for p in splits["train"] + splits["val"])
    test_stratified = not any(note.startswith("test split not stratified") for note in notes)
    val_stratified = not any(note.startswith("validation split not stratified") for note in notes)
    # Stratification is kept whenever scikit-learn can do it; it falls back (with a note) only when it cannot.
    assert test_stratified or not stratifiable(everyone, len(splits["test"]))
    assert val_stratified or not stratifiable(rest, len(splits["val"]))
    # Tolerances, from how StratifiedShuffleSplit allocates persons (floor or ceiling of each class's exact share):
    # the test split is cut first, so each class is within 1 person of its share of the test split; the validation
    # split is then cut from the rest, whose class shares are already off by < 1 person, so val is within 2,
    # and the training split gets what remains, also within 2.
    if test_stratified and val_stratified:
        for split, tolerance in (("test", 1), ("val", 2), ("train", 2)):
            got = Counter(labels[p] for p in splits[split])
            for klass, total in everyone.items():
                share = len(splits[split]) * total / n
                assert abs(got[klass] - share) < tolerance, (split, klass, got[klass], share)


@pytest.mark.parametrize("sizes", [(1, 9), (2, 2), (1, 1, 1, 30)])
def test_tiny_classes_fall_back_to_a_random_split_with_a_note(sizes):
    labels = {f"p{i}": c for i, c in enumerate(c for c, n in enumerate(sizes) for _ in range(n))}
    splits, notes = split_persons(labels, 0.6, 0.2, 0.2, seed=0)
    assert sorted(sum(splits.values(), [])) == sorted(labels)
    assert notes and "not stratified" in notes[0]
