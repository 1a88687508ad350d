"""Task logs, sinks and dead letters in HyDFS: the stream layer's :class:`AsyncLogStore`."""

from __future__ import annotations

import io
from typing import Any

from hydfs.api import Client, HydfsError
from rainstorm.stream.stores import Exists, Fenced, Missing


class HydfsLogStore:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def append(self, name: str, data: bytes, *, fence: str, epoch: int, client: str, seq: int,
                     after: int = 0) -> int:
        """One fenced, idempotent append; the file is created (empty) on first use. ``after``: HyDFS
        orders it right after the append keyed (client, after) (the client retries until it does)."""
        cond: dict[str, Any] = {"fence": fence, "epoch": epoch}
        if after:
            cond["after"] = after
        for _ in range(2):
            try:
                return await self.client.append(name, data, cond=cond, key=(client, seq))
            except HydfsError as exc:
                if exc.code == "fenced":
                    raise Fenced(str(exc)) from None
                if exc.code != "not_found":
                    raise
            try:
                await self.client.create(name, b"")
            except HydfsError as exc:
                if exc.code != "exists":  # another writer created it first: fine
                    raise
        raise HydfsError(f"{name}: could not create the log")

    async def entries(self, name: str) -> list[tuple[int, bytes]]:
        """Acknowledged records; the empty create entry (index 1) is not a record."""
        try:
            return [(i, d) for i, d in await self.client.get_entries(name) if d]
        except HydfsError as exc:
            if exc.code == "not_found":
                return []
            raise

    async def trim(self, name: str, below: int, *, fence: str, epoch: int, client: str, seq: int) -> int:
        """Drop the log's entries below ``below`` (behind a snapshot), fenced and keyed like an append."""
        try:
            return await self.client.trim(name, below, cond={"fence": fence, "epoch": epoch}, key=(client, seq))
        except HydfsError as exc:
            if exc.code == "fenced":
                raise Fenced(str(exc)) from None
            raise

    async def put(self, name: str, data: bytes) -> None:
        """A snapshot file. A name that is taken is refused (Exists): even a retried create of our own
        that landed the first time, since nothing tells the two apart (the instance dies, is replaced)."""
        try:
            await self.client.create_from(name, io.BytesIO(data))   # a chunk per entry: any size
        except HydfsError as exc:
            if exc.code == "exists":
                raise Exists(name) from None
            raise

    async def get(self, name: str) -> bytes:
        try:
            return await self.client.get(name)
        except HydfsError as exc:
            if exc.code == "not_found":
                raise Missing(name) from None
            raise

    async def remove(self, name: str) -> None:
        try:
            await self.client.rm(name)
        except HydfsError as exc:
            if exc.code != "not_found":
                raise
