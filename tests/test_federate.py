"""carotid.federate on a real Flower loopback (a SuperLink and one SuperNode per hospital, real processes): the
run folder a user gets, what the coordinator never holds, the faults, resume and TLS. Tiny data (small_cnn,
32 px, a few persons per hospital, 1-2 rounds): each test is a minute or more on two cores."""

from __future__ import annotations

import base64
import csv
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import openpyxl
import pytest

from carotid.core.errors import INTERRUPTED
from carotid.data.demo import make_demo_data
from carotid.training.site import hide_private, private_words
from tests.conftest import module_command, read_json, run_module, subprocess_env, write_xlsx

pytest.importorskip("flwr")
pytestmark = pytest.mark.slow

FAST = ["--model", "small_cnn", "--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--lr", "1e-3"]
# Half of a hospital's 8 persons validate (2 per class, stratified), so each site's validation AUC is defined.
FAST += ["--train-ratio", "0.5", "--val-ratio", "0.5", "--test-ratio", "0"]
TIMEOUT = 1500  # seconds: a loaded two-core runner starts seven Python processes per round


def hospital(root: Path, name: str, seed: int, headers: tuple[str, str] | None = None) -> tuple[Path, Path, list[str]]:
    """A hospital's folders and sheet, its person IDs prefixed with its name (so a leak is easy to find);
    `headers` gives its sheet other column names than the demo's."""
    demo = root / f"{name}_demo"
    label = make_demo_data(demo, persons=8, frames=3, size=40, seed=seed)
    sheet = openpyxl.load_workbook(label).active
    rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    data = root / name / "frames"
    data.mkdir(parents=True)
    ids = []
    for person, _ in rows[1:]:
        new_id = f"{name.upper()}-PID{person}"
        shutil.move(demo / str(person), data / new_id)
        ids.append(new_id)
    header = list(headers) if headers else rows[0]
    out = write_xlsx(root / name / "labels.xlsx", [header] + [[i, r[1]] for i, r in zip(ids, rows[1:])])
    return data, out, ids


def site_args(sites: dict[str, tuple[Path, Path, list[str]]], extra: dict[str, list[str]] | None = None) -> list[str]:
    args = []
    for name, (data, label, _) in sites.items():
        args += ["--site", name, str(data), str(label), *(extra or {}).get(name, [])]
    return args


def federate(*args: str) -> subprocess.CompletedProcess:
    return run_module("carotid.federate", *args, *FAST, timeout=TIMEOUT)


def federate_until(line_start: str, errors: Path, *args: str) -> tuple[int, str, str]:
    """carotid.federate until it shows a line starting with `line_start`, then Ctrl-C (SIGINT to it alone, so it
    must stop the processes it started itself): (exit status, what it showed, its stderr)."""
    command = module_command("carotid.federate", *args, *FAST)
    with errors.open("w", encoding="utf-8") as stderr:
        job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=subprocess_env())
        too_long = threading.Timer(TIMEOUT, job.kill)
        too_long.start()
        shown = []
        try:
            for line in job.stdout:
                shown.append(line)
                if line.startswith(line_start):
                    job.send_signal(signal.SIGINT)
                    break
            shown.append(job.communicate(timeout=120)[0])
        finally:
            too_long.cancel()
    return job.returncode, "".join(shown), errors.read_text(encoding="utf-8")


def no_leftover_processes(marker: str, seconds: float = 30) -> list[str]:
    """leftover_processes, given the stopped processes a few seconds to exit."""
    end = time.monotonic() + seconds
    while (found := leftover_processes(marker)) and time.monotonic() < end:
        time.sleep(1)
    return found


def leftover_processes(marker: str) -> list[str]:
    """Command lines of running processes that mention `marker` (a test's tmp_path)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(cmdline)
    return found


def read_metrics(fed_dir: Path) -> list[dict]:
    with open(fed_dir / "metrics.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# Over a minute, about 2 on two idle cores: two federated runs (1 round, then resumed to 2 with a site on 2
# processes), each starting a SuperLink, 3 SuperNodes and their apps; one run checks train, resume and privacy.
def test_three_hospitals_train_resume_and_the_coordinator_never_holds_an_id_or_a_path(tmp_path):
    sites = {
        "hospA": hospital(tmp_path, "hospA", 1),
        "hospB": hospital(tmp_path, "hospB", 2, headers=("MRN", "Dx")),
        "hospC": hospital(tmp_path, "hospC", 3),
    }
    out = tmp_path / "out"
    per_site = {"hospB": ["id-column=MRN", "label-column=Dx"]}
    first = federate(*site_args(sites, per_site), "--rounds", "1", "--local-epochs", "1", "--output-dir", str(out))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    progress = next(line for line in first.stdout.splitlines() if line.startswith("round 1/1: "))
    assert all(f"{name}: loss " in progress for name in sites) and "all sites: loss" in progress
    (fed_dir,) = out.glob("fed_*")
    assert leftover_processes(str(tmp_path)) == []
    # The report: the per-round curves (an embedded picture) and a row per site and round.
    report = (fed_dir / "report.html").read_text(encoding="utf-8")
    picture = re.search(r'<img src="data:image/png;base64,([^"]+)"', report)
    assert picture and base64.b64decode(picture.group(1)).startswith(b"\x89PNG")
    assert all(f'<td class="n">1</td><td>{name}</td>' in report for name in (*sites, "all"))

    # Resumed with hospC on 2 processes of its machine (its round under accelerate launch, DDP over gloo) for 3
    # rounds, and stopped with Ctrl-C once round 2 is done: every process it started stops with it.
    on_two = per_site | {"hospC": ["processes=2"]}
    resume = [*site_args(sites, on_two), "--resume", str(fed_dir), "--rounds", "3"]
    status, shown, said = federate_until("round 2/3", tmp_path / "stderr.txt", *resume)
    assert status == 130, shown[-3000:] + said[-3000:]
    assert INTERRUPTED in said and "Traceback" not in said
    assert "resuming" in shown and "round 2/3" in shown and "round 1/" not in shown and "round 3/" not in shown
    assert "hospC on 2 processes" in shown
    assert no_leftover_processes(str(tmp_path)) == []
    site_log = (out / "sites" / "hospC" / fed_dir.name / "train.log").read_text(encoding="utf-8")
    assert "round 1: 1 local epoch(s) on 1 process(es)" in site_log
    assert "round 2: 1 local epoch(s) on 2 process(es) (DDP over CPU processes)" in site_log

    for name in ("config.yaml", "metrics.csv", "train.log", "report.html", "models/best_model.pth"):
        assert (fed_dir / name).is_file(), name
    rows = read_metrics(fed_dir)
    expected = [(str(k), s) for k in (1, 2) for s in ("hospA", "hospB", "hospC", "all")]
    assert sorted((r["round"], r["site"]) for r in rows) == sorted(expected)
    for row in rows:
        assert row["status"] in ("ok", "3/3 sites")
        assert float(row["val_loss"]) > 0 and 0 <= float(row["val_person_auc"]) <= 1
    totals = [r for r in rows if r["site"] == "all"]
    site_rows = [r for r in rows if r["site"] != "all" and r["round"] == "2"]
    persons = sum(int(r["train_persons"]) for r in site_rows)
    assert int(totals[-1]["train_persons"]) == persons
    weighted = sum(float(r["train_loss"]) * int(r["train_persons"]) for r in site_rows) / persons
    assert float(totals[-1]["train_loss"]) == pytest.approx(weighted, rel=1e-4)

    # Each site's own files are in its own folder, its split with its persons.
    for name, (_, _, ids) in sites.items():
        split = read_json(out / "sites" / name / fed_dir.name / "splits.json")
        assert sorted(p for s in split.values() for p in s) == sorted(ids)

    # The coordinator's folder: no person ID, no site path, in any file.
    secrets = [i for _, _, ids in sites.values() for i in ids]
    secrets += [str(p) for data, label, _ in sites.values() for p in (data, label, data.parent)]
    for path in fed_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            leaked = [s for s in secrets if s.encode() in blob]
            assert not leaked, f"{path.relative_to(fed_dir)} holds {leaked[:3]}"

    # The coordinator's model is an ordinary carotid model file: a hospital evaluates it on its own data.
    data, label, _ = sites["hospA"]
    evaluation = tmp_path / "eval"
    result = run_module(
        "carotid.evaluate",
        "--model", str(fed_dir / "models" / "final_model.pth"),
        "--root-dir", str(data), "--label-excel", str(label),
        "--out", str(evaluation), "--bootstrap", "20", "--num-workers", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_json(evaluation / "metrics.json")["n_persons"] == 8


def test_a_hospital_that_fails_before_round_one_stops_the_run_under_its_name(tmp_path):
    sites = {"hospA": hospital(tmp_path, "hospA", 1), "hospB": hospital(tmp_path, "hospB", 2)}
    data, _, _ = sites["hospB"]
    wrong = write_xlsx(tmp_path / "hospB" / "wrong.xlsx", [["编号", "诊断"], ["nobody", "plaque"], ["none", "normal"]])
    sites["hospB"] = (data, wrong, [])
    out = tmp_path / "out"
    result = federate(*site_args(sites), "--rounds", "1", "--output-dir", str(out))
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert list(out.glob("fed_*")) == []  # no coordinator folder for a run that never started
    assert leftover_processes(str(tmp_path)) == []

    # carotid.train's own line for the same data, under the site's name, with the site's path and every word that
    # may name one of its persons hidden: its folder names (person IDs) reach neither the coordinator's console
    # nor its Flower logs, only the site's own.
    said = run_module("carotid.train", "--root-dir", str(data), "--label-excel", str(wrong), *FAST,
                      "--output-dir", str(tmp_path / "train"))  # fmt: skip
    (alone,) = [line for line in said.stderr.splitlines() if line.startswith("error: ")]
    assert "HOSPB-PID" in alone
    alone = alone.removeprefix("error: ").replace(str(data), "ROOT_DIR")
    assert errors[0] == f"error: site hospB: {hide_private(alone, private_words(data, wrong))}"
    (logs,) = out.glob("flower_fed_*/logs")
    coordinator = [result.stdout, result.stderr] + [(logs / n).read_text() for n in ("superlink.log", "flwr_run.log")]
    assert not any("HOSPB-PID" in text for text in coordinator)
    assert "HOSPB-PID" in (logs / "supernode_hospB.log").read_text()


def test_hospitals_whose_classes_differ_are_refused_before_round_one(tmp_path):
    sites = {"hospA": hospital(tmp_path, "hospA", 1), "hospB": hospital(tmp_path, "hospB", 2)}
    data, label, ids = sites["hospB"]
    book = openpyxl.load_workbook(label)
    for row in book.active.iter_rows(min_row=2):
        row[1].value = {"plaque": "Plaque+", "normal": "normal"}[row[1].value]
    book.save(label)
    result = federate(*site_args(sites), "--rounds", "1", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "site hospB has classes" in error and "Plaque+" in error and "site hospA" in error
    assert leftover_processes(str(tmp_path)) == []


def self_signed(folder: Path):
    """A private CA and a SuperLink certificate for 127.0.0.1 signed by it (what a coordinator's IT makes)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from carotid.federated.loopback import Certificates

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
        .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    plain = serialization.NoEncryption()
    (folder / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain))
    return Certificates(folder / "ca.crt", folder / "server.pem", folder / "server.key")


# About 2 minutes on two idle cores: 2 rounds of 3 hospitals over TLS, one killed after round 1; round 2 waits
# for it until Flower's SuperLink finds it gone (its heartbeat, 30 s x 2, fixed in Flower), records it missing
# and goes on with the other two.
def test_over_tls_a_hospital_that_dies_mid_run_is_recorded_missing_and_the_others_go_on(tmp_path):
    from carotid.federate import PREFIX, write_request
    from carotid.federated.loopback import Loopback
    from carotid.federated.options import parse_federate_args, parse_sites

    sites = {name: hospital(tmp_path, name, seed) for seed, name in enumerate(("hospA", "hospB", "hospC"), 1)}
    out = tmp_path / "out"
    argv = [*site_args(sites), "--rounds", "2", "--min-sites", "2", "--round-timeout-minutes", "4", *FAST]
    cfg, given = parse_federate_args([*argv, "--output-dir", str(out)])
    settings = parse_sites(cfg)
    for name in settings:
        settings[name]["output-dir"] = str(out / "sites" / name)
    run_config = write_request(cfg, given, tmp_path / "work", out, "fed_20260101_000000", len(settings))
    lines = []

    with Loopback(
        tmp_path / "work" / "home", settings, tmp_path / "work" / "logs", self_signed(tmp_path / "tls")
    ) as flower:

        def on_line(line: str) -> None:
            lines.append(line)
            if f"{PREFIX}round 1/2" in line:
                flower.kill_site("hospC")  # the hospital's machine goes away after round 1

        status = flower.submit(run_config, on_line)
    assert status == "finished:completed", "\n".join(lines[-40:])
    rows = read_metrics(out / "fed_20260101_000000")
    by_round = {(r["round"], r["site"]): r["status"] for r in rows}
    assert by_round[("1", "hospC")] == "ok"
    assert by_round[("2", "hospC")] == "missing"
    assert by_round[("2", "hospA")] == by_round[("2", "hospB")] == "ok"
    assert by_round[("2", "all")] == "2/3 sites"
    # Flower answers for the dead site from the SuperLink: that answer is hospC's, not a fourth site's
    assert {r["site"] for r in rows} == {"hospA", "hospB", "hospC", "all"}
    assert any("round 2: site hospC failed" in line for line in lines), "\n".join(lines[-40:])
    assert leftover_processes(str(tmp_path)) == []
