"""Which Ray a sweep runs on: a new local one, or a cluster that answers now.

Left to itself, `ray.init(address=None)` attaches to the last cluster that `ray start` recorded on
this machine (`ray_current_cluster` in Ray's temp folder), even one long gone, and then retries
"Failed to connect to GCS" forever. So without an address the sweep starts its own local Ray
(`address="local"`), and a given address is resolved and checked with a bounded TCP connect
before Ray is asked to join it: nothing answering is an error naming the address, not a hang.
"""
from __future__ import annotations

import os
import socket

from vocab.errors import CxrSweepError

CONNECT_TIMEOUT_S = 10.0


class ClusterUnreachable(CxrSweepError, ConnectionError):
    """--address (or RAY_ADDRESS) names a cluster that does not answer."""


def given_address(flag: str | None, environ=os.environ) -> str | None:
    """--address, else RAY_ADDRESS (which `ray job submit` sets for its entrypoint), else None: local."""
    return flag or environ.get("RAY_ADDRESS") or None


def describe(address: str | None) -> str:
    return f"--address {address}" if address != "auto" else "--address auto (the last `ray start` on this machine)"


def resolve(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """The address to give `ray.init`: "local" for none; a Ray Client URL as given (it has its own
    timeout); otherwise host:port, after a connect to the cluster's GCS port has succeeded."""
    if not address or address == "local":
        return "local"
    if address.startswith("ray://"):
        return address
    from ray._private.services import canonicalize_bootstrap_address

    how = describe(address)
    try:
        resolved = canonicalize_bootstrap_address(address)
    except (ValueError, ConnectionError) as exc:
        raise ClusterUnreachable(f"{how}: {exc}") from None
    if resolved is None:
        raise ClusterUnreachable(f"{how}: no running Ray cluster is recorded on this machine; start one "
                                 f"(`ray start --head`) or leave out --address for a local Ray")
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise ClusterUnreachable(
            f"{how}: no Ray cluster answers at {resolved} within {timeout:g} s ({exc}). Is it up? Check with "
            f"`ray status --address {resolved}`; leave out --address to run on a new local Ray") from None
    return resolved


def refused(given: str | None, address: str, exc: Exception) -> str:
    """What to say when a cluster that answers will not let this driver join: mostly a missing token."""
    return (f"{describe(given)}: the Ray cluster at {address} answers but refused this driver ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). Clusters started from this repository's files (cluster.yaml, "
            f"docs/cluster-onprem.yaml, docs/slurm/) require their token: run with RAY_AUTH_MODE=token and "
            f"RAY_AUTH_TOKEN_PATH=<that cluster's token file> (docs/clusters.md)")
