"""Synthetic longitudinal carotid B-mode frames, so the tool runs with no data at hand (`carotid.demo` is its CLI).

Each person gets a vessel at their own depth, angle, calibre and gain: a dark lumen between two bright
intima-media walls, in speckle that fades with depth. "plaque" persons have an echogenic bulge growing
from one wall into the lumen; "normal" persons have none. Frames of a person differ by the cardiac
pulsation of the calibre, a small probe drift and fresh speckle.

`make_demo_data` writes <out>/<person_id>/…/frame_XXX.png and <out>/label.xlsx (Chinese headers 患者编号 / 诊断).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from carotid.core.errors import UserError

CLASSES = ("normal", "plaque")


def _smooth(noise: np.ndarray, passes: int = 2) -> np.ndarray:
    # A few box blurs turn white noise into the grainy, correlated texture of speckle.
    for _ in range(passes):
        noise = (
            noise + np.roll(noise, 1, 0) + np.roll(noise, -1, 0) + np.roll(noise, 1, 1) + np.roll(noise, -1, 1)
        ) / 5
    return noise


def synth_frame(rng: np.random.Generator, person: dict, t: float, width: int, height: int) -> np.ndarray:
    """One uint8 frame (height, width) of the person's vessel at cardiac phase t in [0, 1)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    x = x / width
    drift = 0.01 * np.sin(2 * np.pi * (t + person["phase"]))
    centre = (person["depth"] + drift + np.tan(person["angle"]) * (x - 0.5)) * height
    radius = person["radius"] * height * (1 + 0.06 * np.sin(2 * np.pi * t))
    wall = person["wall"] * height
    distance = np.abs(y - centre)
    echo = 0.3 + 0.1 * _smooth(rng.standard_normal((height, width)), 1)  # soft tissue
    echo = np.where(distance < radius, 0.04, echo)  # anechoic lumen
    wall_profile = np.exp(-(((distance - radius - wall / 2) / (wall / 2)) ** 2))
    echo = echo + 0.9 * wall_profile  # bright intima-media complex, near and far wall
    if person["plaque"]:
        # An echogenic bulge from one wall into the lumen: bright, a little heterogeneous.
        along = np.exp(-(((x - person["plaque_x"]) / person["plaque_len"]) ** 2))
        inner_edge = radius - person["plaque_h"] * radius * along
        side = np.sign(y - centre) == person["plaque_side"]
        inside = side & (distance > inner_edge) & (distance < radius + wall / 2)
        echo = np.where(inside, 0.8 + 0.2 * _smooth(rng.standard_normal((height, width)), 1), echo)
    speckle = np.abs(_smooth(rng.standard_normal((height, width)) + 1j * rng.standard_normal((height, width))))
    speckle /= speckle.mean()  # Rayleigh-like amplitude with mean 1
    image = echo * speckle * person["gain"] * np.exp(-person["attenuation"] * y / height)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def make_persons(n: int, rng: np.random.Generator) -> list[dict]:
    persons = []
    for i in range(n):
        plaque = i % 2 == 1  # balanced classes
        persons.append(
            {
                "id": 1001 + i,
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


def write_label_excel(path: Path, rows: list[tuple[object, str]]) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "标签"
    sheet.append(["患者编号", "诊断"])
    for row in rows:
        sheet.append(list(row))
    book.save(path)


def make_demo_data(out: str | Path, persons: int = 60, frames: int = 12, size: int = 128, seed: int = 0) -> Path:
    """Write the synthetic dataset; returns the path of its label.xlsx."""
    out = Path(out)
    if persons < 4:
        raise UserError(f"--persons must be at least 4, got {persons}", "the split needs persons of both classes")
    if frames < 1 or size < 32:
        raise UserError(
            f"--frames must be ≥ 1 and --size ≥ 32, got {frames} and {size}", "use e.g. --frames 12 --size 128"
        )
    rng = np.random.default_rng(seed)
    width, height = size, size * 3 // 4  # ultrasound frames are wider than tall
    rows = []
    for person in make_persons(persons, rng):
        # Half the persons keep their frames in a nested sequence folder, as exports often do.
        folder = out / str(person["id"]) / ("seq1" if person["id"] % 4 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(frames):
            frame = synth_frame(rng, person, k / frames, width, height)
            Image.fromarray(frame, mode="L").save(folder / f"frame_{k:03d}.png")
        rows.append((person["id"], CLASSES[int(person["plaque"])]))
    label_path = out / "label.xlsx"
    write_label_excel(label_path, rows)
    return label_path
