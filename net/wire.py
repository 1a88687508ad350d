"""Authenticated, versioned msgpack frames: the only bytes any node accepts from another over UDP.

A gossip datagram is ``version (1 byte) | mac (16 bytes) | msgpack body``. The MAC is HMAC-SHA256
under a key derived from the cluster secret, over the version byte and the body, truncated to 128
bits. A frame that fails any check raises :class:`FrameError` with a short reason that callers count;
nothing from the network is trusted before :func:`decode` returns. Datagrams carry no replay protection
of their own: a captured one sent again later still verifies, so gossip must treat it as an old duplicate.

TCP (:mod:`net.rpc`) does not use these frames: it runs per-connection session keys and AES-GMAC
tags, see :mod:`net.session`, and shares only :data:`LENGTH`, :data:`MAX_FRAME`,
:class:`FrameError` and :class:`FrameStats` from here.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import Counter
from typing import Any

import msgpack

VERSION = 1
MAC_LEN = 16
HEADER_LEN = 1 + MAC_LEN
LENGTH = struct.Struct(">I")  # the TCP frames' length prefix (net.session)
MAX_FRAME = 256 * 1024 * 1024  # a frame larger than this is garbage, not a message


class FrameError(ValueError):
    """A frame that must be dropped; ``reason`` is a short counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def derive_key(secret: str | bytes, purpose: str = "frame") -> bytes:
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, f"rainstorm:{purpose}".encode(), hashlib.sha256).digest()


def _mac(key: bytes, version: bytes, body: bytes) -> bytes:
    h = hmac.new(key, version, hashlib.sha256)
    h.update(body)
    return h.digest()[:MAC_LEN]


def encode(key: bytes, obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    version = bytes((VERSION,))
    return version + _mac(key, version, body) + body


def decode(key: bytes, frame: bytes) -> Any:
    if len(frame) < HEADER_LEN:
        raise FrameError("short")
    version = frame[:1]
    if version[0] != VERSION:
        raise FrameError("version")
    body = frame[HEADER_LEN:]
    if not hmac.compare_digest(frame[1:HEADER_LEN], _mac(key, version, body)):
        raise FrameError("mac")
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for garbage
        raise FrameError("body") from exc


class FrameStats(Counter[str]):
    """Dropped-frame counters by reason: UDP ``mac``, ``version``, ``short``, ``body``; TCP ``hello`` (no
    authenticated frame in time), ``size``, ``mac``, ``body``, ``schema``, ``conns`` (over the
    connection limit) (one counter set per node, so ``mac`` and ``body`` count both)."""
