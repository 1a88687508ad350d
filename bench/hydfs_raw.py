"""Baselines for bench/hydfs.py: what the same bytes cost without HyDFS on this machine.

* ``loopback_copy``: a plain TCP copy over 127.0.0.1 (a receiver thread in this process reads the
  bytes and answers one byte; optionally it writes them to a file and fsyncs before answering);
* ``loopback_rate``: sequential request/response messages (send one message, wait for the 1-byte
  answer), the same pattern as sequential appends;
* ``zero_copy_into_file``: the same bytes from a file in the page cache to a new file on the other
  end with no copy through user space (``sendfile`` out, ``splice`` in): the least a copy that
  lands in a file costs here, for any design;
* ``disk_write``: write the bytes to a local file and fsync it;
* ``replicated_rate``: the least any 3-way replicated append can do: a client sends each message to
  a forwarder that writes it to a file and sends it on to two receivers that write it to theirs; the
  client's answer comes once both have it (sequential, like the appends measured against it).

Threads and blocking sockets: the sockets release the GIL, so sender and receiver run in parallel
as two processes would.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import threading
import time
from pathlib import Path

HEADER = struct.Struct(">Q")
BUF = 1 << 20


class _Receiver:
    """Accepts one connection; each message is ``length | bytes``; answers ``b"k"`` after each."""

    def __init__(self, to_disk: Path | None = None, fsync: bool = True,
                 forward: list[int] | None = None) -> None:
        self.to_disk = to_disk
        self.fsync = fsync
        self.forward = forward or []  # ports of receivers each message is sent on to
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.sock.settimeout(30)
            conn, _ = self.sock.accept()
            conn.settimeout(30)
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nexts = [_connect(p) for p in self.forward]
                buf = bytearray(BUF)
                view = memoryview(buf)
                while True:
                    head = conn.recv(HEADER.size, socket.MSG_WAITALL)
                    if len(head) < HEADER.size:
                        return
                    (left,) = HEADER.unpack(head)
                    for nx in nexts:
                        nx.sendall(head)
                    if self.to_disk and not self.forward:
                        self.to_disk.unlink(missing_ok=True)  # a new file, as a new replica writes one
                    out = open(self.to_disk, "ab" if self.forward else "wb") if self.to_disk else None
                    try:
                        while left:
                            n = conn.recv_into(view, min(BUF, left))
                            if n == 0:
                                return
                            for nx in nexts:
                                nx.sendall(view[:n])
                            if out is not None:
                                out.write(view[:n])
                            left -= n
                        if out is not None:
                            out.flush()
                            if self.fsync:
                                os.fsync(out.fileno())
                    finally:
                        if out is not None:
                            out.close()
                    for nx in nexts:
                        if nx.recv(1) != b"k":
                            return
                    conn.sendall(b"k")
        except BaseException as exc:  # surfaced by the caller
            self.error = exc
        finally:
            self.sock.close()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _send(s: socket.socket, data: bytes) -> None:
    s.sendall(HEADER.pack(len(data)))
    s.sendall(data)
    if s.recv(1) != b"k":
        raise ConnectionError("loopback receiver did not answer")


def loopback_copy(data: bytes, repeats: int, to_disk: Path | None = None, fsync: bool = True) -> list[float]:
    """Seconds to copy ``data`` to a receiver (and into its file if ``to_disk``, fsynced if ``fsync``),
    once per repeat. The connection is set up before the clock starts, as HyDFS's node-to-node
    connections are."""
    rx = _Receiver(to_disk, fsync)
    out = []
    with _connect(rx.port) as s:
        _send(s, b"warm")
        for _ in range(repeats):
            t0 = time.perf_counter()
            _send(s, data)
            out.append(time.perf_counter() - t0)
    rx.thread.join(10)
    if rx.error:
        raise rx.error
    return out


def _timed_sends(port: int, msg: bytes, count: int, receivers: list[_Receiver]) -> float:
    """Seconds for ``count`` sequential messages (after one warm-up) to the receiver on ``port``."""
    with _connect(port) as s:
        _send(s, msg)
        t0 = time.perf_counter()
        for _ in range(count):
            _send(s, msg)
        took = time.perf_counter() - t0
    for rx in receivers:
        rx.thread.join(10)
        if rx.error:
            raise rx.error
    return took


def loopback_rate(msg: bytes, count: int) -> float:
    """Bytes per second for ``count`` sequential request/response messages of ``msg``."""
    rx = _Receiver()
    return len(msg) * count / _timed_sends(rx.port, msg, count, [rx])


def replicated_rate(msg: bytes, count: int, tmp: Path, fsync: bool) -> float:
    """Bytes per second for ``count`` sequential messages, each written to three files (fsynced if
    ``fsync``) on a forwarder and two receivers before the client has its answer."""
    tails = [_Receiver(tmp / f"r{k}.bin", fsync) for k in (1, 2)]
    head = _Receiver(tmp / "r0.bin", fsync, forward=[t.port for t in tails])
    took = _timed_sends(head.port, msg, count, [head, *tails])
    for k in range(3):
        (tmp / f"r{k}.bin").unlink(missing_ok=True)
    return len(msg) * count / took


def zero_copy_into_file(data: bytes, tmp: Path, repeats: int) -> list[float]:
    """Seconds to move ``data`` from a file (in the page cache) into a new file at a receiver thread,
    kernel to kernel: ``os.sendfile`` to the socket, ``os.splice`` from it through a pipe into the file."""
    src, dst = tmp / "zc-src.bin", tmp / "zc-dst.bin"
    src.write_bytes(data)
    srv = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            srv.settimeout(30)
            conn, _ = srv.accept()
            conn.settimeout(None)  # splice needs a blocking fd (a timeout makes it non-blocking)
            r, w = os.pipe()
            with contextlib.suppress(OSError):  # a 1 MiB pipe: 16x fewer splice calls than the default
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, BUF)
            with conn:
                while True:
                    head = conn.recv(HEADER.size, socket.MSG_WAITALL)
                    if len(head) < HEADER.size:
                        return
                    (left,) = HEADER.unpack(head)
                    dst.unlink(missing_ok=True)
                    fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
                    try:
                        pos = 0
                        while left:
                            n = os.splice(conn.fileno(), w, min(BUF, left))
                            if n == 0:
                                return
                            moved = 0
                            while moved < n:
                                moved += os.splice(r, fd, n - moved, offset_dst=pos + moved)
                            pos += n
                            left -= n
                    finally:
                        os.close(fd)
                    conn.sendall(b"k")
        except BaseException as exc:  # surfaced by the caller
            errors.append(exc)
        finally:
            srv.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    out = []
    fd = os.open(src, os.O_RDONLY)
    try:
        with _connect(srv.getsockname()[1]) as s:
            s.settimeout(None)  # sendfile, likewise
            for k in range(repeats + 1):  # the first one warms up
                t0 = time.perf_counter()
                s.sendall(HEADER.pack(len(data)))
                sent = 0
                while sent < len(data):
                    sent += os.sendfile(s.fileno(), fd, sent, len(data) - sent)
                if s.recv(1) != b"k":
                    raise ConnectionError("zero-copy receiver did not answer")
                if k:
                    out.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    th.join(10)
    src.unlink(missing_ok=True)
    dst.unlink(missing_ok=True)
    if errors:
        raise errors[0]
    return out


def disk_write(data: bytes, path: Path, repeats: int) -> list[float]:
    """Seconds to write ``data`` to a new file and fsync it, once per repeat."""
    out = []
    for _ in range(repeats):
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        out.append(time.perf_counter() - t0)
    path.unlink(missing_ok=True)
    return out


def primitives(size: int, path: Path, repeats: int = 20) -> dict[str, float]:
    """Median seconds of the passes over ``size`` bytes that HyDFS's data path makes (one of each):
    the frame tag (AES-GMAC; HMAC-SHA256 is what the UDP frames and the old TCP frames use),
    msgpack encode and decode, the block CRC-32C (zlib's CRC-32 for comparison), a copy, a write to
    the page cache, a write + fsync, a read back."""
    import hashlib
    import hmac
    import zlib

    import crc32c
    import msgpack
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    data = os.urandom(size)
    packed = msgpack.packb({"t": "append", "data": data}, use_bin_type=True)
    key = os.urandom(32)

    def timed(fn: object) -> float:
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            out.append(time.perf_counter() - t0)
        return sorted(out)[len(out) // 2]

    def write_fsync() -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def read_back() -> None:
        with open(path, "rb") as f:
            f.read()

    gcm = AESGCM(key[:16])

    def write_only() -> None:
        path.unlink(missing_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    res = {
        "aes-gmac (TCP frame tag)": timed(lambda: gcm.encrypt(b"\0" * 12, b"", data)),
        "hmac-sha256 (UDP frames; old TCP frames)": timed(lambda: hmac.new(key, data, hashlib.sha256).digest()),
        "crc-32c (block checksum)": timed(lambda: crc32c.crc32c(data)),
        "write (page cache)": timed(write_only),
        "msgpack encode": timed(lambda: msgpack.packb({"t": "append", "data": data}, use_bin_type=True)),
        "msgpack decode": timed(lambda: msgpack.unpackb(packed, raw=False)),
        "zlib crc-32 (old block checksum)": timed(lambda: zlib.crc32(data)),
        "bytes copy (concat)": timed(lambda: b"x" + data),
        "write + fsync": timed(write_fsync),
        "read (page cache)": timed(read_back),
    }
    path.unlink(missing_ok=True)
    return res
