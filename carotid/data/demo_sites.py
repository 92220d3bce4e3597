"""Synthetic demo data dealt to N hospitals ("sites") for federated training, plus a test set common to all.

`make_demo_sites` writes <out>/site_1/, <out>/site_2/, …: each site a folder of person folders with its own
label.xlsx (and findings.csv), <out>/test/ likewise (held-out persons no site trains on), and <out>/sites.csv,
one row per folder: persons per class, frames, the scanner gain, the sheet's headers.

Site mixes:
- `iid`: sites of equal size, half of their persons with plaque, one scanner.
- `noniid` (what federated training meets in practice), in a cycle over the sites: a site of mostly plaque
  persons (80%), a site of mostly normal persons (20% plaque), and a small site (0.4 of the others' size,
  balanced). Each site also has its own scanner: a gain on every frame (1.0, 0.85, 1.15 in the same cycle), so
  the sites differ in appearance as well as in labels; the test set holds persons of every site's scanner.

Each site's sheet has headers of its own (患者编号/诊断, Patient ID/Diagnosis, Case No./Class in a cycle), as
three hospitals' sheets would; the class names agree. Person IDs are unique over all folders (site k:
10000·k + n; test: 90000 + n), so the folders can also be pooled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carotid.core.errors import UserError
from carotid.core.files import write_table
from carotid.data.demo import (
    CLASSES,
    FINDINGS_COLUMNS,
    HEADERS,
    check_sizes,
    make_persons,
    write_label_excel,
    write_person,
)

SITE_MIXES = ("iid", "noniid")
SITE_HEADERS = (HEADERS, ("Patient ID", "Diagnosis"), ("Case No.", "Class"))
# noniid, in a cycle over the sites: (what the site is, its size relative to the others, its share with plaque)
NONIID_KINDS = (("mostly plaque", 1.0, 0.8), ("mostly normal", 1.0, 0.2), ("small", 0.4, 0.5))
NONIID_GAINS = (1.0, 0.85, 1.15)
MIN_PER_CLASS = 3  # a site's split needs persons of both classes in training and validation
TEST_ID = 90000


@dataclass(frozen=True)
class SitePlan:
    """One folder to write: a site (or the common test set)."""

    name: str
    kind: str
    normal: int
    plaque: int
    gain: float | None  # the scanner's gain on every frame (None: the test set's persons come from every site's)
    headers: tuple[str, str]
    first_id: int

    @property
    def persons(self) -> int:
        return self.normal + self.plaque


def plan_sites(sites: int, persons: int, mix: str, test_persons: int) -> list[SitePlan]:
    """The sites (persons dealt by the mix, largest remainders rounded up) and then the test set."""
    if mix not in SITE_MIXES:
        raise UserError(f"--site-mix must be one of {', '.join(SITE_MIXES)}, got {mix!r}", "use --site-mix noniid")
    if sites < 2:
        raise UserError(f"--sites must be at least 2, got {sites}", "use e.g. --sites 3 (or leave it out)")
    kinds = [NONIID_KINDS[k % 3] if mix == "noniid" else ("iid", 1.0, 0.5) for k in range(sites)]
    shares = np.array([size for _, size, _ in kinds])
    exact = shares * persons / shares.sum()
    sizes = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - sizes), kind="stable")[: persons - sizes.sum()]:
        sizes[k] += 1
    plans = []
    for k, ((kind, _, plaque_share), size) in enumerate(zip(kinds, sizes)):
        plaque = int(np.floor(plaque_share * size + 0.5))
        gain = NONIID_GAINS[k % 3] if mix == "noniid" else 1.0
        plans.append(
            SitePlan(f"site_{k + 1}", kind, int(size) - plaque, plaque, gain, SITE_HEADERS[k % 3], 10000 * (k + 1))
        )
    for plan in plans:
        if min(plan.normal, plan.plaque) < MIN_PER_CLASS:
            raise UserError(
                f"--persons {persons} is too few for {sites} {mix} sites: {plan.name} ({plan.kind}) would get "
                f"{plan.normal} normal and {plan.plaque} plaque persons (each site needs {MIN_PER_CLASS} of each)",
                f"raise --persons (e.g. {20 * sites}) or lower --sites",
            )
    if test_persons < 2 * MIN_PER_CLASS:
        raise UserError(f"--test-persons must be at least {2 * MIN_PER_CLASS}, got {test_persons}", "e.g. 20")
    test_plaque = test_persons // 2
    return [*plans, SitePlan("test", "held out", test_persons - test_plaque, test_plaque, None, HEADERS, TEST_ID)]


def make_demo_sites(
    out: str | Path,
    sites: int = 3,
    persons: int = 60,
    mix: str = "noniid",
    test_persons: int | None = None,
    frames: int = 12,
    size: int = 128,
    seed: int = 0,
    min_frames: int | None = None,
) -> list[tuple[SitePlan, Path]]:
    """Write the sites and the test set; returns (plan, label.xlsx path) per folder, the test set last.

    `persons`: over all sites; `test_persons`: the common test set (default persons // 3)."""
    check_sizes(persons, frames, size, None, min_frames)
    plans = plan_sites(sites, persons, mix, persons // 3 if test_persons is None else test_persons)
    out = Path(out)
    taken = [plan.name for plan in plans if (out / plan.name).exists()]
    if taken:
        raise UserError(f"{out} already holds {', '.join(taken)}", "choose a new --out folder (nothing was written)")
    rng = np.random.default_rng([seed, 31])
    layout_rng = np.random.default_rng([seed, 31, 23])
    shape = (size, size * 3 // 4)  # ultrasound frames are wider than tall
    scanners = [plan.gain for plan in plans[:-1]]
    written, summary = [], []
    for plan in plans:
        people = make_persons(plan.persons, rng)
        labels = [False] * plan.normal + [True] * plan.plaque
        for n, (person, plaque) in enumerate(zip(people, rng.permutation(labels))):
            # The test set's persons come from every site's scanner in turn.
            gain = scanners[n % len(scanners)] if plan.gain is None else plan.gain
            person.update(id=plan.first_id + n + 1, plaque=bool(plaque), gain=person["gain"] * gain)
        folder = out / plan.name
        findings = []
        for person in people:
            findings += write_person(folder, person, (rng, layout_rng), shape, frames, min_frames, None)
        write_table(folder / "findings.csv", FINDINGS_COLUMNS, findings)
        label_path = folder / "label.xlsx"
        write_label_excel(label_path, [(p["id"], CLASSES[int(p["plaque"])]) for p in people], plan.headers)
        written.append((plan, label_path))
        counts = [plan.persons, plan.normal, plan.plaque, len(findings)]
        summary.append([plan.name, plan.kind, *counts, plan.gain or "mixed", *plan.headers])
    write_table(
        out / "sites.csv",
        ["folder", "kind", "persons", *CLASSES, "frames", "gain", "id_header", "label_header"],
        summary,
    )
    return written
