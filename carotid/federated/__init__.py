"""Federated training across sites (hospitals): the only package that imports a federated framework.

Flower 1.42: `client_app` and `server_app` are a ClientApp and ServerApp around the framework-neutral local round
(`carotid.training.local_round`); `coordinator` keeps the coordinator's run folder (metrics, model files, report);
`loopback` starts a SuperLink and one SuperNode per site on 127.0.0.1 for `carotid.federate`; `app/` is the Flower
app (its pyproject.toml) that `flwr run` submits. NVIDIA FLARE 2.9: `flare_client` and `flare_job` are its client
script and FedAvg job around the same local round.
"""
