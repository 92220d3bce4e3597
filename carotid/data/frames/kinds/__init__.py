"""The file kinds read as frames, one reader class per kind, and the one list that registers them.

To add a kind (NIfTI, NRRD, a vendor format): write a module here with a `FileKind` subclass (its
suffixes, `probe` for the frame count, `read` for the frames, `sniff` if its files can be recognised by
content) and add one instance to `KINDS`. Discovery, the layout check of `--input`, the loaders and the
reports ask this registry and branch only on a kind's properties (`single_frame`, `sequential`).
"""

from __future__ import annotations

import os

from carotid.data.frames.kinds.base import FileKind, Probe, Source
from carotid.data.frames.kinds.dicom import DicomKind
from carotid.data.frames.kinds.image import ImageKind
from carotid.data.frames.kinds.tiff import TiffKind
from carotid.data.frames.kinds.video import VideoKind

KINDS: list[FileKind] = [ImageKind(), TiffKind(), DicomKind(), VideoKind()]

BY_SUFFIX: dict[str, FileKind] = {suffix: kind for kind in KINDS for suffix in kind.suffixes}
BY_NAME: dict[str, FileKind] = {kind.name: kind for kind in KINDS}
FRAME_SUFFIXES = frozenset(BY_SUFFIX)
# Files that look like images or cine loops but are not read: counted and named in data_report.json.
UNHANDLED_SUFFIXES = frozenset(
    {"j2k", "jp2", "jpx", "jpf", "jls", "gif", "webp", "heic", "heif", "nii", "nrrd", "mha", "mhd", "mkv", "wmv"}
    | {"mpg", "mpeg", "m4v", "webm"}
)
UNHANDLED_DOUBLE_SUFFIXES = (".dcm.gz", ".nii.gz")
# Archives are never opened: a person's folder left zipped is reported, not read.
ARCHIVE_SUFFIXES = frozenset({"zip", "rar", "7z", "tar", "tgz", "gz", "bz2", "xz"})

__all__ = [
    "BY_NAME",
    "CONTENT_BY_SUFFIX",
    "FRAME_SUFFIXES",
    "KINDS",
    "FileKind",
    "Probe",
    "Source",
    "content_in",
    "content_of",
    "kind_by_content",
    "kind_by_name",
    "head_of",
    "kind_of",
    "reading_kind",
]
# The first bytes of each kind's files (DICOM: 'DICM' after the 128-byte preamble), for a file named as another kind,
# with the suffix that names that content.
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image", "png"),
    (b"\xff\xd8\xff", "image", "jpg"),
    (b"BM", "image", "bmp"),
    (b"II*\x00", "tiff", "tif"),
    (b"MM\x00*", "tiff", "tif"),
)
HEAD_BYTES = 132  # enough for every magic above and the DICOM preamble
# By their first two bytes (no two magics share them): one lookup a file at start-up, not a scan of MAGIC.
_MAGIC_BY_START = {magic[:2]: (magic, (BY_NAME[name], suffix)) for magic, name, suffix in MAGIC}
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)


def suffix_of(name: str) -> str:
    name = name.rpartition("/")[2]  # a path's folders may hold dots
    return name.rpartition(".")[2].lower() if "." in name else ""


def kind_by_name(name: str) -> FileKind | None:
    """The kind a file's suffix names; None when the name says nothing (see `may_sniff`) or is not a frame file."""
    return BY_SUFFIX.get(suffix_of(name))


def may_sniff(name: str) -> bool:
    """A name without a suffix, or with a numeric one (DICOM exports named by their instance UID,
    "1.2.840…123"): its kind, if any, is decided by content."""
    suffix = suffix_of(name)
    return not suffix or suffix.isdigit()


def is_unhandled(name: str) -> bool:
    """Looks like an image or a cine loop of a kind that is not read (counted and named, never read)."""
    return suffix_of(name) in UNHANDLED_SUFFIXES or name.lower().endswith(UNHANDLED_DOUBLE_SUFFIXES)


def is_archive(name: str) -> bool:
    return suffix_of(name) in ARCHIVE_SUFFIXES and not name.lower().endswith(UNHANDLED_DOUBLE_SUFFIXES)


def kind_of(path: str) -> FileKind | None:
    """The kind a file's name says: by its suffix, else by content for a name that says nothing; None if not frames."""
    kind = kind_by_name(path)
    if kind is None and may_sniff(path):
        kind = next((k for k in KINDS if k.sniff(path)), None)
    return kind


def reading_kind(path: str) -> FileKind | None:
    """The kind a frame file is read as, everywhere (its frame count, its frames): what its first bytes say, else
    what its name says; None for a file that is no frame file by name (`kind_of`). A cine loop named .jpg is thus
    counted and read as the DICOM it is, never as one image."""
    named = kind_of(path)
    return None if named is None else kind_by_content(path) or named


def content_of(path: str, dir_fd: int | None = None) -> tuple[FileKind, str] | None:
    """(kind, suffix) that a file's first bytes say, whatever its name; None when they say nothing known (or the
    file cannot be read). `dir_fd`: an open folder that a relative `path` is below (the kernel then resolves only
    the rest)."""
    head = head_of(path, dir_fd)
    return None if head is None else content_in(head)


def head_of(path: str, dir_fd: int | None = None) -> bytes | None:
    """A file's first HEAD_BYTES bytes; None when it cannot be read."""
    try:
        # os-level: at start-up this runs once per image file; never blocking (a FIFO is never waited on)
        fd = os.open(path, _OPEN_FLAGS, dir_fd=dir_fd)
        try:
            return os.read(fd, HEAD_BYTES)
        finally:
            os.close(fd)
    except OSError:
        return None


def content_in(head: bytes) -> tuple[FileKind, str] | None:
    """(kind, suffix) that a file's first bytes say; None when they say nothing known."""
    if head[128:132] == b"DICM":
        return BY_NAME["dicom"], "dcm"
    magic, found = _MAGIC_BY_START.get(head[:2], (None, None))
    return found if magic is not None and head.startswith(magic) else None


# What `content_in` can say, by its suffix (a file cache keeps the suffix).
CONTENT_BY_SUFFIX: dict[str, tuple[FileKind, str]] = {
    suffix: (BY_NAME[name], suffix) for _, name, suffix in (*MAGIC, (b"", "dicom", "dcm"))
}


def kind_by_content(path: str) -> FileKind | None:
    """The kind a file's first bytes say (a DICOM named .jpg, a PNG named .dcm); None when they say nothing known."""
    found = content_of(path)
    return None if found is None else found[0]
