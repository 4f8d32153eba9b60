"""The Dask cluster: a LocalCluster by default, or an existing scheduler by address."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster

from pipeline.config.catalog import Cluster
from pipeline.config.errors import ClusterError

log = logging.getLogger(__name__)


LOOPBACK = "127.0.0.1"


def default_workers() -> int:
    return 1


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextmanager
def dask_client(cfg: Cluster, scheduler: str | None = None, workers: int | None = None, timeout: float = 10.0,
                listen: str | None = None) -> Iterator[Client]:
    """A client on the scheduler named by ``scheduler`` (or the catalog), else on a new LocalCluster.

    A LocalCluster gets ``workers`` processes (default: the catalog's, else one
    worker whose torch uses every core), each with ``cfg.threads_per_worker`` threads.
    Its scheduler, workers, nannies and dashboard listen on ``listen`` (default:
    ``cluster.listen``, itself 127.0.0.1 by default), so nothing is reachable from the
    network unless the user asks; a non-loopback address is logged as a warning.
    """
    address = scheduler or cfg.scheduler
    if address:
        try:
            client = Client(address, timeout=f"{timeout}s")
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"the Dask scheduler at {address} does not answer ({exc}); start it or fix --scheduler / cluster.scheduler") from None
        log.info("connected to scheduler %s; dashboard %s", address, client.dashboard_link)
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or cfg.workers or default_workers()
    kwargs = {}
    if cfg.memory_limit:
        kwargs["memory_limit"] = cfg.memory_limit
    host = listen or cfg.listen
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=cfg.threads_per_worker,
        processes=True,
        host=host,
        dashboard_address=_host_port(host, 0),
        worker_dashboard_address=None,
        silence_logs=logging.WARNING,
        **kwargs,
    )
    client = Client(cluster)
    dashboard = _host_port(host, cluster.scheduler.http_server.port)
    if is_loopback(host):
        log.info("local Dask cluster: %d worker(s) on %s; dashboard %s", n, cluster.scheduler.address, client.dashboard_link)
    else:
        log.warning("local Dask cluster: %d worker(s) listening on %s (reachable from the network): scheduler %s, "
                    "dashboard http://%s/status", n, host, cluster.scheduler.address, dashboard)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def workers_with_resource(client: Client, resource: str = "GPU") -> list[str]:
    """Addresses of workers that advertise ``resource``."""
    info = client.scheduler_info(n_workers=-1)["workers"] if _takes_n_workers(client) else client.scheduler_info()["workers"]
    return [addr for addr, w in info.items() if w.get("resources", {}).get(resource, 0) > 0]


def _takes_n_workers(client: Client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def torch_threads_per_worker(client: Client) -> int:
    """Threads for torch in each worker so workers on one machine do not oversubscribe its cores."""
    info = client.scheduler_info()["workers"]
    n = max(1, len(info))
    return max(1, (os.cpu_count() or 1) // n)
