"""The Flower ServerApp: the coordinator's rounds over the sites' ClientApps.

Before round 1 every site is asked to describe itself (query): its name, class names and counts, or its error; a
site's error or class names that differ stop the run there, naming the site. Then each round: train (Flower's
FedAvg, or FedProx with `fedprox_mu`, weighted by training persons) → the aggregated global weights → evaluate
(each site scores them on its own validation persons) → the coordinator's files (`coordinator.CoordinatorRun`).
Per-site numbers come from each reply's source node, mapped to the site's name from its query answer.

With `keep_local: norm` (FedBN) the sites send no norm layer; the global weights keep the coordinator's initial
norm layers, and each site puts its own over them.

Run config (`flwr run APP CONNECTION --run-config '...'`): `output-dir`, `config` (a YAML with `options:` and
`federated:` sections, as written by `carotid.federate`), `run-name` (fed_YYYYMMDD_HHMMSS by default), `resume`
(a fed_… folder: continue after its last completed round).
"""

from __future__ import annotations

import dataclasses
import json
import time

import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from carotid.core.errors import UserError
from carotid.federated.coordinator import CoordinatorRun, Federation
from carotid.training.config import TrainConfig
from carotid.training.epoch import build_run_model
from carotid.training.site import SITE_OPTIONS

app = ServerApp()
PREFIX = "carotid: "  # the lines carotid.federate shows of the ServerApp's log


def say(line: str, run: CoordinatorRun | None = None) -> None:
    if run is not None:
        run.log(PREFIX + line)
    else:
        print(PREFIX + line, flush=True)


def read_request(run_config) -> tuple[TrainConfig, Federation, str, str | None]:
    """(options, federated settings, output dir, run name) of a new run from its config YAML."""
    path = str(run_config.get("config", ""))
    if not path:
        raise UserError("the run config names no options file", "pass --run-config 'config=\"fed.yaml\"'")
    data = yaml.safe_load(open(path, encoding="utf-8"))
    options = {k: v for k, v in (data.get("options") or {}).items() if k not in SITE_OPTIONS}
    fed = Federation(**(data.get("federated") or {}))
    return TrainConfig(**options), fed, str(run_config.get("output-dir", "./output")), run_config.get("run-name")


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        coordinate(grid, context.run_config)
    except UserError as err:
        say(f"error: {err}")
        # An exception, not SystemExit: Flower records the run as failed only for an exception (a SystemExit leaves
        # it "running" and `flwr run --stream` waiting).
        raise RuntimeError(f"carotid stopped the run: {err}") from None


def coordinate(grid: Grid, run_config) -> None:
    resume = str(run_config.get("resume", "") or "")
    if resume:
        run, fed, saved_sites = CoordinatorRun.reopen(resume)
        cfg, run_name = run.cfg, run.paths.path.name
    else:
        cfg, fed, output_dir, run_name = read_request(run_config)
        run_name = str(run_name or "") or time.strftime("fed_%Y%m%d_%H%M%S")
    if int(run_config.get("rounds", 0) or 0):
        fed = dataclasses.replace(fed, rounds=int(run_config["rounds"]))
    options = json.dumps({k: v for k, v in vars(cfg).items() if k not in SITE_OPTIONS})
    base = {
        "options": options,
        "run-name": run_name,
        "keep-local": fed.keep_local or "",
        "local-epochs": fed.local_epochs,
    }
    names = describe_sites(grid, fed, base)
    if resume:
        check_same_sites(saved_sites, names)
        first, weights = run.last_round()
        say(f"resuming {run_name} after round {first} of {fed.rounds}", run)
    else:
        run = CoordinatorRun.create(output_dir, run_name, cfg, fed, {n: s for n, s in names.values()})
        first, weights = 0, initial_weights(cfg, run.class_names)
        say(f"run directory: {run.paths.path}", run)
    say(
        f"{fed.strategy}: {fed.rounds} rounds of {fed.local_epochs} local epoch(s) at {len(names)} sites "
        f"({', '.join(_site_label(n, s) for n, s in names.values())}); at least {fed.min_sites} must answer each round",
        run,
    )
    strategy = make_strategy(fed)
    for round_number in range(first + 1, fed.rounds + 1):
        weights = one_round(grid, strategy, run, fed, base, names, round_number, weights)
    report = run.write_report(fed.strategy)
    say(f"done: {fed.rounds} rounds; models in {run.paths.models}; report: {report}", run)


def _site_label(name: str, summary: dict) -> str:
    processes = int(summary.get("processes", 1))
    return f"{name} on {processes} processes" if processes > 1 else name


def make_strategy(fed: Federation) -> FedAvg:
    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": fed.min_sites,
        "min_evaluate_nodes": fed.min_sites,
        "min_available_nodes": fed.min_sites,
    }
    return FedProx(proximal_mu=fed.fedprox_mu, **common) if fed.fedprox_mu > 0 else FedAvg(**common)


def initial_weights(cfg: TrainConfig, class_names: list[str]) -> dict[str, torch.Tensor]:
    """The run's starting model, seeded, with --pretrained-weights/--load-model: the same at every site."""
    torch.manual_seed(cfg.seed)
    model, lines = build_run_model(cfg, class_names)
    for line in lines:
        say(line)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Before round 1
# ---------------------------------------------------------------------------------------------


def wait_for_sites(grid: Grid, count: int, timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() > end:
            break
        time.sleep(1.0)
    if len(nodes) < count:
        raise UserError(
            f"only {len(nodes)} of {count} sites connected within {timeout / 60:.0f} minutes",
            "start every site's flower-supernode (check its address and certificates), or lower the number of sites",
        )
    return nodes


def describe_sites(grid: Grid, fed: Federation, base: dict) -> dict[int, tuple[str, dict]]:
    """node ID → (site name, its summary); a site's error or a duplicate name is a UserError naming it."""
    nodes = wait_for_sites(grid, fed.sites, fed.round_timeout_minutes * 60)
    content = RecordDict({"config": ConfigRecord(base)})
    messages = [Message(content=content, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    replies = {
        m.metadata.src_node_id: m for m in grid.send_and_receive(messages, timeout=fed.round_timeout_minutes * 60)
    }
    sites: dict[int, tuple[str, dict]] = {}
    errors = []
    for node in nodes:
        reply = replies.get(node)
        answer = _answer(reply)
        if "error" in answer:
            errors.append(f"site {answer.get('name') or node}: {answer['error']}")
            continue
        # How many processes (GPUs) the site trains on: shown at the start, kept in config.yaml with its counts.
        summary = json.loads(str(answer["summary"])) | {"processes": int(answer.get("processes", 1))}
        sites[node] = (str(answer["name"]), summary)
    if errors:
        raise UserError("; ".join(errors))
    seen = [name for name, _ in sites.values()]
    if len(set(seen)) < len(seen):
        raise UserError(f"two sites share a name: {sorted(seen)}", 'give each SuperNode its own site="NAME"')
    return sites


def _answer(reply: Message | None) -> dict:
    if reply is None:
        return {"error": "no answer in time"}
    if reply.has_error():
        return {"error": f"its ClientApp failed ({reply.error.reason})"}
    return dict(reply.content["site"])


def check_same_sites(saved: dict, names: dict[int, tuple[str, dict]]) -> None:
    now = sorted(name for name, _ in names.values())
    if now != sorted(saved):
        raise UserError(f"the run had sites {sorted(saved)}, now {now} answered", "start the run's own sites to resume")


# ---------------------------------------------------------------------------------------------
# A round
# ---------------------------------------------------------------------------------------------


def one_round(grid, strategy, run, fed, base, names, round_number, weights) -> dict[str, torch.Tensor]:
    timeout = fed.round_timeout_minutes * 60
    config = ConfigRecord(dict(base))
    messages = list(strategy.configure_train(round_number, ArrayRecord(weights), config, grid))
    rows = {name: {"status": "missing"} for name, _ in names.values()}
    trained = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = replying_node(reply, messages)
        name = names.get(node, (f"node {node}", None))[0]
        if reply.has_error() or "metrics" not in reply.content:
            rows[name] = {"status": "missing"}
            say(
                f"warning: round {round_number}: site {name} failed: {_failure(reply)}", run
            )  # the site's line: no path
            continue
        numbers = dict(reply.content["metrics"])
        rows[name] = {
            "status": "ok",
            "train_persons": numbers["num-examples"],
            "train_frames": numbers["train_frames"],
            "train_loss": numbers.get("train_loss"),
        }
        trained.append(reply)
    if len(trained) < fed.min_sites:
        raise UserError(
            f"round {round_number}: only {len(trained)} site(s) answered, fewer than --min-sites {fed.min_sites}",
            f"restart the missing sites, then continue with --resume {run.paths.path}",
        )
    arrays, _ = strategy.aggregate_train(round_number, trained)
    weights = next_global(weights, arrays)
    evaluate(grid, strategy, run, fed, base, names, round_number, weights, rows)
    total = run.end_round(round_number, rows, weights)
    say(progress_line(round_number, fed.rounds, rows, total), run)
    return weights


def next_global(weights: dict[str, torch.Tensor], arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """The averaged weights over the last global ones: under FedBN the sites sent no norm layer, and the global
    weights keep the ones they had (the coordinator's initial norm layers)."""
    return dict(weights) | arrays.to_torch_state_dict()


def evaluate(grid, strategy, run, fed, base, names, round_number, weights, rows) -> None:
    timeout = fed.round_timeout_minutes * 60
    config = ConfigRecord(dict(base))
    messages = list(strategy.configure_evaluate(round_number, ArrayRecord(weights), config, grid))
    for reply in grid.send_and_receive(messages, timeout=timeout):
        name = names.get(replying_node(reply, messages), (None,))[0]
        if name is None or rows.get(name, {}).get("status") != "ok":
            continue
        if reply.has_error() or "metrics" not in reply.content:
            say(
                f"warning: round {round_number}: site {name} could not score the global weights: {_failure(reply)}", run
            )
            continue
        numbers = dict(reply.content["metrics"])
        rows[name] |= {k: numbers.get(k) for k in ("val_persons", "val_person_auc", "val_loss")}


def replying_node(reply: Message, sent: list[Message]) -> int:
    """The node a reply stands for. A site that went away mid-round answers through the SuperLink: Flower writes
    an error reply whose source is the SuperLink itself, so it is matched to the site by the message it answers
    (without this, the round counted a fourth "site" and left the real one without its failure line)."""
    node = reply.metadata.src_node_id
    if node == SUPERLINK_NODE_ID:
        to = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
        node = to.get(reply.metadata.reply_to_message_id, node)
    return node


def _failure(reply: Message) -> str:
    if reply.has_error():
        return reply.error.reason
    return str(dict(reply.content["site"]).get("error", "no result"))


def progress_line(round_number: int, rounds: int, rows: dict, total: dict) -> str:
    def numbers(row: dict) -> str:
        if row.get("status") not in ("ok", None) and "sites" not in str(row.get("status")):
            return "missing"
        return f"loss {_fmt(row.get('train_loss'))}, val AUC {_fmt(row.get('val_person_auc'))}"

    sites = " | ".join(f"{name}: {numbers(row)}" for name, row in rows.items())
    best = " (best so far)" if total.get("best") else ""
    return f"round {round_number}/{rounds}: {sites} | all sites: {numbers(total)}{best}"


def _fmt(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if number != number else f"{number:.3f}"
