"""`python -m carotid.federated.patient superlink|supernode ARGS`: Flower's own SuperLink or SuperNode, giving
the app processes it spawns more time to report that they started. Used by `carotid.federate`'s loopback only.

Why: Flower 1.42 lets a spawned ServerApp/ClientApp process 30 s (HEARTBEAT_DEFAULT_INTERVAL) from being handed
its task to its first heartbeat. On a loaded machine (a shared CI runner, three sites and the coordinator on
two cores) importing Flower alone can take longer; the SuperNode then revokes the task and starts a new process,
again and again. Only the task-claim window of the node's own state changes here: the node's heartbeats to the
SuperLink (how fast a dead site is noticed) keep Flower's timing. A real deployment runs Flower's own commands.

Flower 1.42 has no setting for this window (no flag, no environment variable), so the module constant that
`claim_task` reads is changed; that is sound only for the Flower version this was written against.
`check_patience_patch` refuses any other version, and a constant that is not where it was, with an error naming
the installed version, before any process starts: a changed Flower never silently loses the longer window.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from importlib import metadata

from carotid.core.errors import UserError

START_PATIENCE_SECONDS = 300
FLOWER_VERSION = "1.42.0"  # the exact pin of carotid[federated] (pyproject.toml)
CONSTANT = "HEARTBEAT_DEFAULT_INTERVAL"
# The node states whose claim_task gives a spawned app process CONSTANT seconds to start.
STATES = ("flwr.supercore.corestate.in_memory_corestate", "flwr.supercore.corestate.sql_corestate")


def installed_flower() -> str:
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return "none"


def check_patience_patch() -> list:
    """The node-state modules whose constant the loopback changes; a UserError naming the installed flwr version
    when it is not the pinned one or the constant is not where claim_task reads it."""
    found = installed_flower()
    fix = f"install carotid's pin: pip install 'flwr=={FLOWER_VERSION}' (or 'carotid[federated]')"
    if found != FLOWER_VERSION:
        raise UserError(
            f"carotid's Flower loopback is written for flwr {FLOWER_VERSION}, found flwr {found}: it changes a "
            f"Flower internal ({CONSTANT}, the start window of a spawned app) that other versions may not have",
            fix,
        )
    modules = []
    for name in STATES:
        try:
            module = importlib.import_module(name)
            claim = inspect.getsource(module.__dict__[_state_class(module)].claim_task)
        except (ImportError, KeyError, AttributeError, OSError, TypeError, StopIteration):
            claim = ""
        if not isinstance(getattr(module, CONSTANT, None), int) or CONSTANT not in claim:
            raise UserError(
                f"flwr {found}: {name}.{CONSTANT} is not where carotid's loopback expects it (read by claim_task)",
                f"reinstall the pinned version: pip install --force-reinstall 'flwr=={FLOWER_VERSION}'",
            )
        modules.append(module)
    return modules


def _state_class(module) -> str:
    """The name of the module's node-state class (the one that defines claim_task)."""
    own = [n for n, v in vars(module).items() if inspect.isclass(v) and v.__module__ == module.__name__]
    return next(n for n in own if "claim_task" in vars(module)[n].__dict__)


def main() -> None:
    try:
        modules = check_patience_patch()
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    for state in modules:
        setattr(state, CONSTANT, START_PATIENCE_SECONDS)
    which = sys.argv.pop(1)
    sys.argv[0] = f"flower-{which}"
    if which == "superlink":
        from flwr.superlink.cli import flower_superlink as entry
    elif which == "supernode":
        from flwr.supernode.cli import flower_supernode as entry
    else:
        raise SystemExit(f"usage: python -m carotid.federated.patient superlink|supernode ARGS (not {which})")
    entry()


if __name__ == "__main__":
    main()
