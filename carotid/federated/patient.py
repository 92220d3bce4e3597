"""`python -m carotid.federated.patient superlink|supernode ARGS`: Flower's own SuperLink or SuperNode, giving
the app processes it spawns more time to report that they started. Used by `carotid.federate`'s loopback only.

Why: Flower 1.42 lets a spawned ServerApp/ClientApp process 30 s (HEARTBEAT_DEFAULT_INTERVAL) from being handed
its task to its first heartbeat. On a loaded machine (a shared CI runner, three sites and the coordinator on
two cores) importing Flower alone can take longer; the SuperNode then revokes the task and starts a new process,
again and again. Only the task-claim window of the node's own state changes here: the node's heartbeats to the
SuperLink (how fast a dead site is noticed) keep Flower's timing. A real deployment runs Flower's own commands.
"""

from __future__ import annotations

import sys

START_PATIENCE_SECONDS = 300


def main() -> None:
    from flwr.supercore.corestate import in_memory_corestate, sql_corestate

    for state in (in_memory_corestate, sql_corestate):
        state.HEARTBEAT_DEFAULT_INTERVAL = START_PATIENCE_SECONDS
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
