"""Federated training across sites (hospitals): the only package that imports a federated framework.

`flare_client` and `flare_job` are NVIDIA FLARE 2.9's client script and FedAvg job around the framework-neutral
local round (`carotid.training.local_round`).
"""
