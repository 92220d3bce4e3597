"""Synthetic longitudinal carotid B-mode frames, so the tool runs with no data at hand (`carotid.demo` is its CLI).

Each person gets a vessel at their own depth, angle, calibre and gain: a dark lumen between two bright
intima-media walls, in speckle that fades with depth. "plaque" persons have an echogenic bulge growing
from one wall into the lumen; "normal" persons have none. Frames of a person differ by the cardiac
pulsation of the calibre, a small probe drift and fresh speckle.

Sparse findings (`finding_frames`): in a real sweep a plaque shows in a few frames only. With `finding_frames=N`
a plaque person's plaque shows in N consecutive frames of their sweep (at a seeded random place); their other
frames are drawn like a normal person's. The default (None) shows it in every frame, as before.

`make_demo_data` writes <out>/<person_id>/…/frame_XXX.png, <out>/label.xlsx (Chinese headers 患者编号 / 诊断) and
<out>/findings.csv (person_id, path under <out>, finding 0/1: which frames show the plaque, the ground truth for
checking a person-level model's attention).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openpyxl
from PIL import Image

from carotid.core.errors import UserError
from carotid.core.files import write_table

CLASSES = ("normal", "plaque")
HEADERS = ("患者编号", "诊断")  # the label sheet's ID and label headers
FINDINGS_COLUMNS = ["person_id", "path", "finding"]


def _smooth(noise: np.ndarray, passes: int = 2) -> np.ndarray:
    # A few box blurs turn white noise into the grainy, correlated texture of speckle.
    for _ in range(passes):
        noise = (
            noise + np.roll(noise, 1, 0) + np.roll(noise, -1, 0) + np.roll(noise, 1, 1) + np.roll(noise, -1, 1)
        ) / 5
    return noise


def _geometry(person: dict, t: float, width: int, height: int) -> tuple[np.ndarray, ...]:
    """(x in [0, 1), distance from the vessel axis, lumen radius, wall thickness, side of the axis) per pixel."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    x = x / width
    drift = 0.01 * np.sin(2 * np.pi * (t + person["phase"]))
    centre = (person["depth"] + drift + np.tan(person["angle"]) * (x - 0.5)) * height
    radius = person["radius"] * height * (1 + 0.06 * np.sin(2 * np.pi * t))
    return x, y, np.abs(y - centre), radius, person["wall"] * height, np.sign(y - centre)


def plaque_mask(person: dict, t: float, width: int, height: int) -> np.ndarray:
    """Boolean (height, width): where the person's plaque lies at phase t (its parameters exist for every person,
    so a normal person's mask is where their plaque would be)."""
    x, _, distance, radius, wall, side = _geometry(person, t, width, height)
    along = np.exp(-(((x - person["plaque_x"]) / person["plaque_len"]) ** 2))
    inner_edge = radius - person["plaque_h"] * radius * along
    return (side == person["plaque_side"]) & (distance > inner_edge) & (distance < radius + wall / 2)


def synth_frame(
    rng: np.random.Generator, person: dict, t: float, width: int, height: int, finding: bool | None = None
) -> np.ndarray:
    """One uint8 frame (height, width) of the person's vessel at cardiac phase t in [0, 1).

    `finding`: whether this frame shows the person's plaque (default: whether the person has one)."""
    finding = person["plaque"] if finding is None else finding
    _, y, distance, radius, wall, _ = _geometry(person, t, width, height)
    echo = 0.3 + 0.1 * _smooth(rng.standard_normal((height, width)), 1)  # soft tissue
    echo = np.where(distance < radius, 0.04, echo)  # anechoic lumen
    wall_profile = np.exp(-(((distance - radius - wall / 2) / (wall / 2)) ** 2))
    echo = echo + 0.9 * wall_profile  # bright intima-media complex, near and far wall
    if person["plaque"]:
        # An echogenic bulge from one wall into the lumen: bright, a little heterogeneous. Its texture is drawn for
        # every frame of a plaque person, shown or not, so that the frames' speckle does not depend on finding_frames.
        texture = 0.8 + 0.2 * _smooth(rng.standard_normal((height, width)), 1)
        if finding:
            echo = np.where(plaque_mask(person, t, width, height), texture, echo)
    speckle = np.abs(_smooth(rng.standard_normal((height, width)) + 1j * rng.standard_normal((height, width))))
    speckle /= speckle.mean()  # Rayleigh-like amplitude with mean 1
    image = echo * speckle * person["gain"] * np.exp(-person["attenuation"] * y / height)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def make_persons(n: int, rng: np.random.Generator, first_id: int = 1001) -> list[dict]:
    persons = []
    for i in range(n):
        plaque = i % 2 == 1  # balanced classes
        persons.append(
            {
                "id": first_id + i,
                "plaque": plaque,
                "depth": rng.uniform(0.4, 0.6),
                "angle": rng.uniform(-0.12, 0.12),
                "radius": rng.uniform(0.09, 0.13),
                "wall": rng.uniform(0.025, 0.04),
                "gain": rng.uniform(0.8, 1.25),
                "attenuation": rng.uniform(0.2, 0.8),
                "phase": rng.uniform(0, 1),
                "plaque_x": rng.uniform(0.3, 0.7),
                "plaque_len": rng.uniform(0.1, 0.2),
                "plaque_h": rng.uniform(0.45, 0.8),
                "plaque_side": rng.choice([-1, 1]),
            }
        )
    return persons


def write_label_excel(
    path: Path, rows: list[tuple[object, str]], headers: tuple[str, str] = HEADERS, title: str = "标签"
) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = title
    sheet.append(list(headers))
    for row in rows:
        sheet.append(list(row))
    book.save(path)


def finding_flags(plaque: bool, frames: int, finding_frames: int | None, rng: np.random.Generator) -> list[bool]:
    """Which of a person's frames show their plaque: a run of `finding_frames` consecutive frames at a random start
    (a sweep passes over the plaque), all of them when None, none for a normal person."""
    if not plaque:
        return [False] * frames
    if finding_frames is None or finding_frames >= frames:
        return [True] * frames
    start = int(rng.integers(0, frames - finding_frames + 1))
    return [start <= k < start + finding_frames for k in range(frames)]


def check_sizes(persons: int, frames: int, size: int, finding_frames: int | None, min_frames: int | None) -> None:
    if persons < 4:
        raise UserError(f"--persons must be at least 4, got {persons}", "the split needs persons of both classes")
    if frames < 1 or size < 32:
        raise UserError(
            f"--frames must be ≥ 1 and --size ≥ 32, got {frames} and {size}", "use e.g. --frames 12 --size 128"
        )
    if finding_frames is not None and not 1 <= finding_frames <= (min_frames or frames):
        raise UserError(
            f"--finding-frames must be between 1 and the frames per person ({min_frames or frames}), "
            f"got {finding_frames}",
            "use e.g. --finding-frames 2 (or leave it out: every frame of a plaque person shows the plaque)",
        )
    if min_frames is not None and not 1 <= min_frames <= frames:
        raise UserError(f"--min-frames must be between 1 and --frames ({frames}), got {min_frames}", "e.g. 6")


def make_demo_data(
    out: str | Path,
    persons: int = 60,
    frames: int = 12,
    size: int = 128,
    seed: int = 0,
    finding_frames: int | None = None,
    min_frames: int | None = None,
    first_id: int = 1001,
) -> Path:
    """Write the synthetic dataset; returns the path of its label.xlsx.

    `finding_frames`: how many of a plaque person's frames show the plaque (None: all). `min_frames`: persons get
    between min_frames and frames frames (None: all get `frames`). Person IDs count up from `first_id`: another
    first_id makes persons no model trained on the default data has seen."""
    check_sizes(persons, frames, size, finding_frames, min_frames)
    out = Path(out)
    rng = np.random.default_rng(seed)
    # Frame counts and finding places come from a stream of their own, so the default data stay as they were.
    layout_rng = np.random.default_rng([seed, 23])
    width, height = size, size * 3 // 4  # ultrasound frames are wider than tall
    rows, findings = [], []
    for person in make_persons(persons, rng, first_id):
        findings += write_person(out, person, (rng, layout_rng), (width, height), frames, min_frames, finding_frames)
        rows.append((person["id"], CLASSES[int(person["plaque"])]))
    write_table(out / "findings.csv", FINDINGS_COLUMNS, findings)
    label_path = out / "label.xlsx"
    write_label_excel(label_path, rows)
    return label_path


def write_person(
    out: Path,
    person: dict,
    rngs: tuple[np.random.Generator, np.random.Generator],
    shape: tuple[int, int],
    frames: int,
    min_frames: int | None,
    finding_frames: int | None,
) -> list[list]:
    """Write one person's frames under out/<id>/; returns their findings.csv rows. `rngs`: (pixels, layout)."""
    rng, layout_rng = rngs
    # Half the persons keep their frames in a nested sequence folder, as exports often do.
    folder = out / str(person["id"]) / ("seq1" if person["id"] % 4 == 0 else "")
    folder.mkdir(parents=True, exist_ok=True)
    count = frames if min_frames is None else int(layout_rng.integers(min_frames, frames + 1))
    findings = []
    for k, finding in enumerate(finding_flags(person["plaque"], count, finding_frames, layout_rng)):
        frame = synth_frame(rng, person, k / count, *shape, finding)
        Image.fromarray(frame, mode="L").save(folder / f"frame_{k:03d}.png")
        findings.append([person["id"], (folder / f"frame_{k:03d}.png").relative_to(out).as_posix(), int(finding)])
    return findings
