"""The hosts of a job, their addresses and ports, and each ps-lite role's environment."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from imgcls.config.environment import ResourceConfig
from imgcls.errors import AlgorithmError, ClientError
from imgcls.log import logger

DEFAULT_PS_PORT = 8000
RESOLVE_ATTEMPTS = 30
RESOLVE_PAUSE_SECONDS = 2.0


@dataclass(frozen=True)
class Cluster:
    """Where every host of the job is, and which one this is."""

    hosts: tuple[str, ...]
    current_host: str
    addresses: Mapping[str, str]
    ps_port: int
    heartbeat_timeout: float

    @property
    def host_index(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def is_leader(self) -> bool:
        return self.host_index == 0

    @property
    def leader_address(self) -> str:
        return self.addresses[self.hosts[0]]

    @property
    def coordinator_port(self) -> int:
        """imgcls's own coordination (metrics, membership) listens next to the scheduler."""
        return self.ps_port + 1

    def role_env(self, role: str) -> dict[str, str]:
        """The DMLC_* variables of a ps-lite scheduler, server or worker on this host."""
        return {
            "DMLC_ROLE": role,
            "DMLC_PS_ROOT_URI": self.leader_address,
            "DMLC_PS_ROOT_PORT": str(self.ps_port),
            "DMLC_NUM_SERVER": str(len(self.hosts)),
            "DMLC_NUM_WORKER": str(len(self.hosts)),
            "DMLC_NODE_HOST": self.addresses[self.current_host],
        }


def parse_host_map(text: str) -> dict[str, str]:
    """`IMGCLS_HOST_ADDRESSES="algo-1=127.0.0.1,algo-2=127.0.0.1"` for local multi-host runs."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, address = item.partition("=")
        if not sep or not host or not address:
            raise ClientError(
                f"IMGCLS_HOST_ADDRESSES item {item!r} is not host=address "
                "(e.g. algo-1=127.0.0.1,algo-2=127.0.0.1)."
            )
        mapping[host.strip()] = address.strip()
    return mapping


def resolve(
    host: str, attempts: int = RESOLVE_ATTEMPTS, pause: float = RESOLVE_PAUSE_SECONDS
) -> str:
    """The host's IP address; the platform's host names can appear late, so retry a while."""
    for attempt in range(1, attempts + 1):
        try:
            return socket.gethostbyname(host)
        except OSError as exc:
            if attempt == attempts:
                raise AlgorithmError(
                    f"Host {host!r} could not be resolved after {attempts} attempts: {exc}."
                ) from None
            logger.info("Host %s not resolvable yet (%s); retrying.", host, exc)
            time.sleep(pause)
    raise AssertionError("unreachable")


def cluster_from(resources: ResourceConfig, environ: Mapping[str, str] = os.environ) -> Cluster:
    """Resolve every host (IMGCLS_HOST_ADDRESSES first) and read the ports and timeouts."""
    overrides = parse_host_map(environ.get("IMGCLS_HOST_ADDRESSES", ""))
    addresses = {host: overrides.get(host) or resolve(host) for host in resources.hosts}
    return Cluster(
        hosts=resources.hosts,
        current_host=resources.current_host,
        addresses=addresses,
        ps_port=_int_setting(environ, "IMGCLS_PS_PORT", DEFAULT_PS_PORT),
        heartbeat_timeout=float(_int_setting(environ, "IMGCLS_HEARTBEAT_TIMEOUT", 60)),
    )


def _int_setting(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "")
    if not value:
        return default
    if not value.isdigit() or int(value) == 0:
        raise ClientError(f"{name}={value!r} must be a positive integer.")
    return int(value)
