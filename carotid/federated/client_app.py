"""The Flower ClientApp of a site: its data from the SuperNode's node-config, its work from the local round.

A SuperNode is started with the site's settings, e.g.
`flower-supernode ... --node-config 'site="hospA" root-dir="/data/us" label-excel="/data/labels.xlsx"
output-dir="/data/carotid_sites" id-column="MRN"'`; the keys are carotid.train's option names of the options a
site owns (`carotid.training.site.SITE_OPTIONS`, dashes for underscores), `site`, the site's name, and
`processes`, how many processes (GPUs) of its machine the site trains on (1 by default; more runs each round under
`accelerate launch`, `carotid.federated.site_round`). The coordinator's options arrive with each message. Three
message types:

- query: read the sheet and folders, make (or read back) the split, answer class names and counts;
- train: one local round on the global weights; answer the new weights, counts and aggregate metrics;
- evaluate: score the global weights on the site's validation persons.

A user's mistake at the site (a bad sheet, no frames) is answered as `error` text in the reply, so the coordinator
can name the site; the text is carotid's `error:` line with the site's paths and every word that may name a person
hidden (the site's console shows it whole).
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from carotid.core.errors import UserError
from carotid.federated.site_round import RoundTask, site_round
from carotid.training.config import TrainConfig
from carotid.training.site import (
    PROCESSES,
    SITE_OPTIONS,
    hide_private,
    open_site,
    private_words,
    site_accelerator,
    site_options,
    site_processes,
    summarize,
)

app = ClientApp()

FLAGS = {name.replace("_", "-"): name for name in (*SITE_OPTIONS, PROCESSES)}


def site_settings(node_config) -> tuple[str, dict]:
    """(the site's name, its carotid.train options) from a SuperNode's node-config."""
    settings = dict(node_config)
    name = str(settings.pop("site", "") or "")
    if not name:
        raise UserError("the SuperNode's --node-config has no site name", 'add site="NAME" to --node-config')
    unknown = sorted(set(settings) - set(FLAGS))
    if unknown:
        raise UserError(
            f"site {name}: --node-config keys {unknown} are not a site's settings",
            f"use only site, {', '.join(FLAGS)}",
        )
    return name, {FLAGS[key]: value for key, value in settings.items()}


def _site_cfg(msg: Message, context: Context) -> tuple[str, TrainConfig, dict, int]:
    """(the site's name, its TrainConfig, the message's config, its processes)."""
    config = msg.content["config"]
    name, site = site_settings(context.node_config)
    options = json.loads(str(config["options"]))
    return name, site_options(TrainConfig(**options), site), config, site_processes(site)


def _error_reply(msg: Message, context: Context, err: BaseException) -> Message:
    """The site's error in words, for the coordinator: a user's mistake as its `error:` line, anything else as its
    last line; the site's own paths in it are replaced by the names of their settings, and every word that may name
    a person (a folder name of its root folder, a value of its sheet's ID-like columns) by [private]. The site's
    own console has the whole line."""
    if isinstance(err, UserError):
        text = str(err)
        print(f"error: {text}", file=sys.stderr, flush=True)
    else:
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        text = f"{last} (the site's own log has the traceback)"
        traceback.print_exc()
    config = context.node_config
    for key, placeholder in (("root-dir", "ROOT_DIR"), ("label-excel", "LABEL_EXCEL"), ("output-dir", "SITE_DIR")):
        path = str(config.get(key, "") or "")
        if path:
            text = text.replace(str(Path(path).resolve()), placeholder).replace(path, placeholder)
    header_row = config.get("header-row")
    words = private_words(config.get("root-dir"), config.get("label-excel"), config.get("sheet"), header_row)
    text = hide_private(text, words - {"ROOT_DIR", "LABEL_EXCEL", "SITE_DIR"})
    name = str(config.get("site", ""))
    return Message(content=RecordDict({"site": ConfigRecord({"name": name, "error": text})}), reply_to=msg)


def _numbers(metrics: dict) -> dict[str, float | int]:
    """A MetricRecord's values: numbers only, an undefined one (AUC of one class) as NaN."""
    return {k: (math.nan if v is None else v) for k, v in metrics.items() if v is None or isinstance(v, (int, float))}


@app.query()
def describe(msg: Message, context: Context) -> Message:
    try:
        name, cfg, config, processes = _site_cfg(msg, context)
        manifest, _ = open_site(site_accelerator(cfg), cfg, str(config["run-name"]))
        summary = summarize(manifest)
    except Exception as err:  # noqa: BLE001 - every failure is answered, named by site, to the coordinator
        return _error_reply(msg, context, err)
    answer = {"name": name, "summary": json.dumps(summary.to_dict()), "processes": processes}
    return Message(content=RecordDict({"site": ConfigRecord(answer)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        _, cfg, config, processes = _site_cfg(msg, context)
        task = RoundTask(
            train=True,
            epochs=int(config["local-epochs"]),
            round_number=int(config["server-round"]),
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            keep_local=str(config["keep-local"]) or None,
        )
        weights = msg.content["arrays"].to_torch_state_dict()
        _, result = site_round(cfg, str(config["run-name"]), weights, task, processes)
    except Exception as err:  # noqa: BLE001
        return _error_reply(msg, context, err)
    metrics = _numbers(result.metrics) | {
        "num-examples": result.train_persons,  # FedAvg weighs each site by its training persons
        "train_frames": result.train_frames,
        "class_persons": result.class_persons,
    }
    content = {"arrays": ArrayRecord(result.weights), "metrics": MetricRecord(metrics)}
    return Message(content=RecordDict(content), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    try:
        _, cfg, config, processes = _site_cfg(msg, context)
        task = RoundTask(evaluate=True, keep_local=str(config["keep-local"]) or None)
        weights = msg.content["arrays"].to_torch_state_dict()
        numbers, _ = site_round(cfg, str(config["run-name"]), weights, task, processes)
    except Exception as err:  # noqa: BLE001
        return _error_reply(msg, context, err)
    metrics = _numbers(numbers) | {"num-examples": numbers["val_persons"]}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
