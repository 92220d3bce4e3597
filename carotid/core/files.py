"""Writing files so that a crash never leaves half of one, and reading untrusted weight files safely.

Owns: atomic writes (temporary name, fsync, rename), small CSV tables, file hashes and the one
`torch.load` of the package (`weights_only=True`). Imports nothing else of the package but `errors`,
so every module may use it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from carotid.core.errors import UserError
from carotid.core.text import ESCAPE, printable


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: some file systems refuse to fsync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, rename over `path`; the old file survives any fault."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and hasattr(err, "add_note"):
            err.add_note(f"carotid: {path} was not replaced; the version written before (if any) is intact")
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """UTF-8; a file name that is not UTF-8 (carotid.core.text.printable) is written with its bytes as \\xNN."""
    atomic_write_bytes(path, text.encode("utf-8", ESCAPE))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Valid JSON for any file name: a name that is not UTF-8 is stored as its printable form (bytes as \\xNN,
    carotid.core.text.printable), a JSON string like any other, never a raw \\x escape JSON does not know."""
    atomic_write_text(path, json.dumps(_printable_strings(obj), indent=2, ensure_ascii=False) + "\n")


def _printable_strings(obj: Any) -> Any:
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {_printable_strings(k): _printable_strings(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_printable_strings(v) for v in obj]
    return obj


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# OWASP's CSV injection rule: a cell starting with one of these is a formula to Excel and LibreOffice.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(value: Any) -> Any:
    """A cell as written: text that a spreadsheet would run as a formula ('=cmd|…', '@SUM(…)', '-2+3') gets a
    leading apostrophe, so Excel and LibreOffice show it as text; numbers (-0.5) are left as they are. Text
    already starting with apostrophes before such a character gets one more, so `csv_text` reverses it exactly."""
    if isinstance(value, str) and value.lstrip("'").startswith(FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def csv_text(cell: str) -> str:
    """A cell read back: the value `csv_cell` was given."""
    if cell.startswith("'") and cell.lstrip("'").startswith(FORMULA_START) and not _is_number(cell.lstrip("'")):
        return cell[1:]
    return cell


def write_table(path: str | Path, header: list[str], rows) -> None:
    """A CSV of plain rows (lists), written whole and atomically, so a kill never leaves half a row; cells that
    would run as formulas are written as text (`csv_cell`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([csv_cell(h) for h in header])
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    atomic_write_text(path, buffer.getvalue())


def read_table(path: str | Path) -> list[dict[str, str]]:
    """A CSV written by `write_table`, as dicts of the values written."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return [{csv_text(k): csv_text(v or "") for k, v in row.items()} for row in csv.DictReader(handle)]


def read_table_rows(path: str | Path) -> list[list[str]]:
    """A CSV written by `write_table`, as lists (the header first)."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return [[csv_text(v) for v in row] for row in csv.reader(handle)]


def write_records(path: str | Path, records: list[dict[str, Any]], columns: list[str]) -> None:
    """A CSV of dict rows (missing keys empty, floats in full), written atomically."""
    write_table(path, columns, ([_csv_value(record.get(k)) for k in columns] for record in records))


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        # repr is the shortest text that reads back as the same float: every number on a page can be
        # recomputed from the CSVs exactly, even a decision at a threshold of 0.999999924.
        return repr(float(value))
    return value


def read_records(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        return []
    return read_table(path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_torch_load(path: str | Path, what: str) -> Any:
    """torch.load with weights_only=True: tensors and plain values only, never a pickled callable."""
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - refused pickles and corrupt archives alike
        raise UserError(
            f"{what} {path} {_refusal_reason(err)}",
            "only model files written by carotid (or plain state dicts of tensors) can be loaded; "
            "never unpickle a file you do not trust",
        ) from None


def read_safetensors(path: str | Path, what: str) -> dict[str, Any]:
    """A .safetensors file's tensors (a format that holds tensors only: nothing in it can run)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(
            f"{what} {path} is not a readable .safetensors file ({type(err).__name__}: {str(err)[:120]})",
            "copy the file again, or pass the .pth/.bin it was made from",
        ) from None


def _refusal_reason(err: Exception) -> str:
    # torch reports a refused global only in its message text; reading it lets us name what the file would call.
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch colours its message
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip()
        called = re.search(r"GLOBAL (\S+)", detail)
        if called:
            return (
                f"was refused: loading it would call '{called.group(1)}', which a file of weights never needs "
                f"(a pickle like this can run any code)"
            )
        first = (detail.splitlines() or ["unsupported content"])[0].strip()
        return f"was refused: it holds more than tensors and plain values ({first[:120]})"
    first = (text.strip().splitlines() or [""])[0].strip()
    detail = f"{type(err).__name__}{': ' + first[:120] if first else ''}"
    return f"cannot be read as a PyTorch file: damaged or not a .pth ({detail})"
