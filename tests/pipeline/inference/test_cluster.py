"""The local Dask cluster a run starts: where its services listen."""

from __future__ import annotations

import logging
import os

import psutil
import pytest

from pipeline.config.catalog import Cluster
from pipeline.inference.cluster import dask_client

LOOPBACK = {"127.0.0.1", "::1"}


def listening_addresses() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of this process and its children."""
    me = psutil.Process(os.getpid())
    found = set()
    for process in [me, *me.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        found.update((c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN)
    return found


def test_every_socket_of_a_local_cluster_listens_on_loopback_only(caplog: pytest.LogCaptureFixture) -> None:
    before = listening_addresses()
    with caplog.at_level(logging.INFO, logger="pipeline.inference.cluster"), dask_client(Cluster(workers=1)) as client:
        opened = listening_addresses() - before
        dashboard_port = client.cluster.scheduler.http_server.port
        assert len(client.scheduler_info()["workers"]) == 1
    ports = {port for _, port in opened}
    assert dashboard_port in ports  # the dashboard is among the sockets checked
    assert len(opened) >= 3  # scheduler, dashboard, worker (and its nanny)
    exposed = {(ip, port) for ip, port in opened if ip not in LOOPBACK}
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert "127.0.0.1" in caplog.text and "reachable from the network" not in caplog.text


def test_a_non_loopback_listen_address_is_used_and_logged_as_exposed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.inference.cluster"), \
            dask_client(Cluster(workers=1), listen="0.0.0.0") as client:
        dashboard_port = client.cluster.scheduler.http_server.port
        opened = listening_addresses()
    assert ("0.0.0.0", dashboard_port) in opened
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("0.0.0.0" in m and f":{dashboard_port}/status" in m and "reachable from the network" in m for m in warnings)
