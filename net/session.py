"""The TCP framing of :mod:`net.rpc`: per-connection session keys and AES-GMAC frame tags.

Handshake: each side sends ``MAGIC | nonce`` (16 random bytes) as soon as the connection is up, the
client its ``nonce_c``, the server its ``nonce_s``. Both derive one 16-byte AES key per direction,
``HMAC-SHA256(key, label | nonce_c | nonce_s)[:16]`` with the labels ``rainstorm rpc c2s``/``s2c``,
where ``key`` is the cluster key. Nothing is authenticated by the hellos themselves: the first frame
is, and it only verifies under keys bound to both fresh nonces.

Frame: ``length (4 bytes, big endian, of the body) | msgpack body | tag (16 bytes)``. The tag is
AES-GCM over an empty plaintext (that is, GMAC) under the sender's direction key, with the prefix and
body as associated data and the sender's frame counter (0, 1, 2, ... as a 96-bit big-endian number) as
the GCM nonce. The receiver uses the counter it expects next, so a frame that was dropped, reordered,
duplicated or taken from another connection fails like a forged one. GMAC runs at memory speed
(AES-NI/CLMUL), about ten times the speed of the HMAC-SHA256 of the UDP frames in :mod:`net.wire`.

:class:`FrameReader` assembles frames from the byte stream without the copies of a StreamReader:
small frames are verified and unpacked in place in one scratch buffer, a large frame is received
directly into one buffer that holds it whole (the last such buffer is reused), then verified and
unpacked from there. Everything here is sans-IO: :mod:`net.rpc` drives it from an
asyncio protocol, tests drive it from plain sockets.
"""

from __future__ import annotations

import hashlib
import hmac
import mmap
import os
from collections.abc import Callable
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from net.wire import LENGTH, MAX_FRAME, FrameError

Buffer = bytes | bytearray | memoryview

MAGIC = b"RSR2"  # RainStorm RPC, framing version 2 (version 1: HMAC over the whole frame)
NONCE_LEN = 16
HELLO_LEN = len(MAGIC) + NONCE_LEN
KEY_LEN = 16  # AES-128: the tag strength is 128 bits either way, and it is the faster key schedule
TAG_LEN = 16
OVERHEAD = LENGTH.size + TAG_LEN
SMALL = 64 * 1024  # frames up to this size are joined into one write and parsed in the scratch buffer
RETAIN = 32 * 1024 * 1024  # largest buffer kept for reuse: fresh memory costs page faults per MB


def hello() -> tuple[bytes, bytes]:
    """``(hello message, our nonce)`` for a new connection."""
    nonce = os.urandom(NONCE_LEN)
    return MAGIC + nonce, nonce


def parse_hello(data: Buffer) -> bytes:
    """The peer's nonce; raises ``FrameError("hello")`` unless ``data`` is a hello of this version."""
    if len(data) != HELLO_LEN or bytes(data[: len(MAGIC)]) != MAGIC:
        raise FrameError("hello")
    return bytes(data[len(MAGIC):])


def session_keys(key: bytes, nonce_c: bytes, nonce_s: bytes) -> tuple[bytes, bytes]:
    """``(client-to-server, server-to-client)`` keys, bound to both nonces so no other connection shares them."""
    def one(label: bytes) -> bytes:
        return hmac.new(key, label + nonce_c + nonce_s, hashlib.sha256).digest()[:KEY_LEN]

    return one(b"rainstorm rpc c2s"), one(b"rainstorm rpc s2c")


class Session:
    """Both directions' keys and frame counters of one connection."""

    def __init__(self, key: bytes, nonce_c: bytes, nonce_s: bytes, *, client: bool) -> None:
        c2s, s2c = session_keys(key, nonce_c, nonce_s)
        tx, rx = (c2s, s2c) if client else (s2c, c2s)
        self._tx_alg = algorithms.AES(tx)
        self._tx = AESGCM(tx)
        self._rx = AESGCM(rx)
        self.sent = 0  # frames sealed so far: the next frame's GCM nonce
        self.received = 0  # frames verified so far: the nonce the next frame must carry

    def seal(self, body: Buffer) -> list[Buffer]:
        """The buffers to write, in order, for one frame holding ``body``; counts the frame.

        A small frame comes back as one joined buffer (one send call); a large one as prefix, the body
        itself and the tag, so its payload is never copied here.
        """
        n = len(body)
        if n > MAX_FRAME:
            raise ValueError(f"frame of {n} bytes exceeds MAX_FRAME")
        nonce = self.sent.to_bytes(12, "big")
        self.sent += 1
        head = LENGTH.pack(n)
        if n <= SMALL:
            frame = bytearray(head)
            frame += body
            frame += self._tx.encrypt(nonce, b"", frame)
            return [frame]
        # GMAC over prefix and body without joining them: GCM's associated data may come in pieces
        enc = Cipher(self._tx_alg, modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(head)
        enc.authenticate_additional_data(body)
        enc.finalize()
        return [head, body, enc.tag]

    def frame(self, obj: Any) -> bytes:
        """One whole frame for ``obj``, for tools and tests (the RPC layer avoids the join)."""
        return b"".join(bytes(b) for b in self.seal(msgpack.packb(obj, use_bin_type=True)))

    def open(self, frame: memoryview) -> memoryview:
        """The body of ``frame`` (prefix, body, tag) if its tag is the next expected one; else ``FrameError("mac")``."""
        cut = len(frame) - TAG_LEN
        try:
            self._rx.decrypt(self.received.to_bytes(12, "big"), frame[cut:], frame[:cut])
        except InvalidTag:
            raise FrameError("mac") from None
        self.received += 1
        return frame[LENGTH.size:cut]


class BufferPool:
    """Large receive buffers: new ones untouched until bytes arrive, a few kept because page faults cost.

    A new buffer is an anonymous mmap, so a length prefix alone (the peer not yet authenticated)
    reserves address space, not memory: ``bytearray(n)`` would zero all ``n`` bytes at once. Faulting
    fresh pages in costs about 1 ms per MB on a VM, so the last buffer is kept for the next large frame.
    """

    def __init__(self, keep: int = 1, largest: int = RETAIN) -> None:
        self.keep = keep
        self.largest = largest
        self._free: list[mmap.mmap] = []

    def take(self, n: int) -> mmap.mmap:
        for i, buf in enumerate(self._free):
            if len(buf) >= n:
                return self._free.pop(i)
        return mmap.mmap(-1, n)

    def give(self, buf: mmap.mmap) -> None:
        if len(buf) > self.largest:
            return
        self._free.append(buf)
        self._free.sort(key=len, reverse=True)
        del self._free[self.keep:]


class FrameReader:
    """Turns received bytes into verified, decoded frames: the hello first, then frames in order.

    Drive it like an ``asyncio.BufferedProtocol``: :meth:`get_buffer` says where the next bytes go,
    :meth:`buffer_updated` takes how many arrived and calls ``on_message`` for each complete frame.
    Any bad input raises :class:`FrameError`; the caller then drops the connection.
    """

    def __init__(self, on_hello: Callable[[bytes], Session], on_message: Callable[[Any], None],
                 pool: BufferPool | None = None, scratch: int = 2 * SMALL) -> None:
        self.on_hello = on_hello
        self.on_message = on_message
        self.pool = pool if pool is not None else BufferPool()
        self.session: Session | None = None
        self._scratch = bytearray(scratch)
        self._sv = memoryview(self._scratch)
        self._start = 0  # unparsed bytes are _scratch[_start:_end]
        self._end = 0
        self._big: mmap.mmap | None = None  # the buffer of the one large frame being received
        self._bv = memoryview(b"")
        self._filled = 0
        self._total = 0

    def get_buffer(self) -> memoryview:
        if self._big is not None:
            return self._bv[self._filled:self._total]
        return self._sv[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is None:
            self._end += nbytes
            self._parse()
            return
        self._filled += nbytes
        if self._filled < self._total:
            return
        big, view = self._big, self._bv
        self._big, self._bv = None, memoryview(b"")
        try:
            self._deliver(view[:self._total])
        finally:
            view.release()
            self.pool.give(big)

    def at_eof(self) -> None:
        """The peer closed: a cut-off hello is a bad hello; a cut-off frame is a lost connection, not counted."""
        if self.session is None and self._end > self._start:
            raise FrameError("hello")

    def _parse(self) -> None:
        sv, pos, end = self._sv, self._start, self._end
        try:
            if self.session is None:
                have = end - pos
                if bytes(sv[pos:pos + min(have, len(MAGIC))]) != MAGIC[:have]:
                    raise FrameError("hello")  # garbage is dropped at its first byte, not after 20
                if have < HELLO_LEN:
                    return
                self.session = self.on_hello(parse_hello(sv[pos:pos + HELLO_LEN]))
                pos += HELLO_LEN
            while end - pos >= LENGTH.size:
                (n,) = LENGTH.unpack_from(sv, pos)
                if n > MAX_FRAME:
                    raise FrameError("size")  # before any allocation
                total = n + OVERHEAD
                if end - pos >= total:
                    self._deliver(sv[pos:pos + total])
                    pos += total
                    continue
                if total > len(sv):  # large: receive the rest straight into one buffer that holds it whole
                    self._big = self.pool.take(total)
                    self._bv = memoryview(self._big)
                    self._bv[:end - pos] = sv[pos:end]
                    self._filled, self._total = end - pos, total
                    pos = end
                break
        finally:
            if pos == end:
                self._start = self._end = 0
            elif pos > 0:  # a partial small frame: move it to the front (at most one scratch buffer)
                rest = bytes(sv[pos:end])
                sv[:len(rest)] = rest
                self._start, self._end = 0, len(rest)
            else:
                self._start = pos

    def _deliver(self, frame: memoryview) -> None:
        assert self.session is not None
        body = self.session.open(frame)
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several types for garbage
            raise FrameError("body") from exc
        finally:
            body.release()
        self.on_message(obj)
