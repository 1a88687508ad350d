"""Baselines for bench/hydfs.py: what the same bytes cost without HyDFS on this machine.

* ``loopback_copy``: a plain TCP copy over 127.0.0.1 (a receiver thread in this process reads the
  bytes and answers one byte; optionally it writes them to a file and fsyncs before answering);
* ``loopback_rate``: sequential request/response messages (send one message, wait for the 1-byte
  answer), the same pattern as sequential appends;
* ``zero_copy_into_file``: the same bytes from a file in the page cache to a new file on the other
  end with no copy through user space (``sendfile`` out, ``splice`` in): the least a copy that
  lands in a file costs here, for any design;
* ``disk_write``: write the bytes to a local file and fsync it;
* ``new_file_write``: write the bytes into a new file (no fsync), once right after the same amount
  of memory was freed and once after the memory has been idle a few seconds. On a VM that hands
  free guest memory back to its host (virtio-balloon free page reporting), the second must wait for
  the host to back every page again: that is what a node writing a new replica pays;
* ``growing_file_rate``: bytes per second appended to one growing file, the page-cache cost each
  replica of an append pays at least;
* ``zero_copy_replicated_rate``: ``replicated_rate`` with no copy through user space past the
  client's send (``splice`` and ``tee``); on this VM no clear gain over it;
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
from collections.abc import Iterator
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
                for left in _lengths(conn):
                    for nx in nexts:
                        nx.sendall(HEADER.pack(left))
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


def _lengths(conn: socket.socket) -> Iterator[int]:
    """The length of each message on ``conn`` (``length | bytes``; the caller reads the bytes), until EOF."""
    while True:
        head = conn.recv(HEADER.size, socket.MSG_WAITALL)
        if len(head) < HEADER.size:
            return
        (n,) = HEADER.unpack(head)
        yield n


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
            r, w = _pipe()
            with conn:
                for left in _lengths(conn):
                    dst.unlink(missing_ok=True)
                    fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
                    try:
                        pos = 0
                        while left:
                            n = os.splice(conn.fileno(), w, min(BUF, left))
                            if n == 0:
                                return
                            _splice_all(r, fd, n, pos)
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


def new_file_write(data: bytes, path: Path, repeats: int, idle: float) -> list[float]:
    """Seconds to write ``data`` into a new file (page cache only, no fsync), each after ``idle``
    seconds with nothing written. The file is unlinked after each repeat, so with ``idle=0`` the
    next write gets back the pages just freed, and with a few seconds of idle time it gets what the
    machine's free memory costs once it has settled."""
    out = []
    for _ in range(repeats):
        path.unlink(missing_ok=True)
        time.sleep(idle)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            t0 = time.perf_counter()
            for pos in range(0, len(data), BUF):
                os.pwrite(fd, memoryview(data)[pos:pos + BUF], pos)
            out.append(time.perf_counter() - t0)
        finally:
            os.close(fd)
    path.unlink(missing_ok=True)
    return out


def growing_file_rate(msg: bytes, count: int, path: Path, idle: float) -> float:
    """Bytes per second for ``count`` writes of ``msg``, each at the end of one growing file, after
    ``idle`` seconds with nothing written (see :func:`new_file_write`)."""
    time.sleep(idle)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        for k in range(count):
            os.pwrite(fd, msg, k * len(msg))
        took = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return len(msg) * count / took


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


def _tee(fd_in: int, fd_out: int, n: int) -> int:
    """``tee(2)``, which :mod:`os` lacks: duplicate up to ``n`` bytes of one pipe into another."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
    libc.tee.restype = ctypes.c_ssize_t
    got = libc.tee(fd_in, fd_out, n, 0)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(got)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    with contextlib.suppress(OSError):  # 1 MiB: 16x fewer splice calls than the default 64 KiB
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, BUF)
    return r, w


def _splice_all(src: int, dst: int, n: int, offset_dst: int | None = None) -> None:
    moved = 0
    while moved < n:
        if offset_dst is None:
            got = os.splice(src, dst, n - moved)
        else:
            got = os.splice(src, dst, n - moved, offset_dst=offset_dst + moved)
        if got == 0:
            raise ConnectionError("splice: the other end closed")
        moved += got


def zero_copy_replicated_rate(msg: bytes, count: int, tmp: Path) -> float:
    """Bytes per second for ``count`` sequential messages, each landing in three files with no copy
    through user space past the client's send: the forwarder splices the socket into a pipe, ``tee``s
    it into one pipe per receiver, splices those to the receivers' sockets and the original into its
    own file; each receiver splices its socket into its file; the client's answer comes once all
    three hold the message. No framing, no checks, no authentication: the kernel-only counterpart of
    :func:`replicated_rate`."""
    errors: list[BaseException] = []
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    ports = [s.getsockname()[1] for s in servers]
    paths = [tmp / f"zr{k}.bin" for k in range(3)]

    def node(k: int, forward: list[int]) -> None:
        """Node ``k``: splices each message into its file and, tee'd, on to the nodes on ``forward``."""
        try:
            servers[k].settimeout(30)
            conn, _ = servers[k].accept()
            servers[k].close()
            conn.settimeout(None)  # splice needs blocking fds
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            outs = [_connect(p) for p in forward]
            for s in outs:
                s.settimeout(None)
            a = _pipe()
            copies = [_pipe() for _ in outs]
            fd = os.open(paths[k], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            pos = 0
            with conn:
                for left in _lengths(conn):
                    for s in outs:
                        s.sendall(HEADER.pack(left))
                    while left:
                        n = os.splice(conn.fileno(), a[1], min(BUF, left))
                        if n == 0:
                            return
                        for (cr, cw), s in zip(copies, outs, strict=True):
                            if _tee(a[0], cw, n) != n:  # the copy pipes are empty and as large as a
                                raise OSError("tee duplicated less than the chunk")
                            _splice_all(cr, s.fileno(), n)
                        _splice_all(a[0], fd, n, pos)
                        pos += n
                        left -= n
                    for s in outs:
                        if s.recv(1) != b"k":
                            return
                    conn.sendall(b"k")
        except BaseException as exc:  # surfaced by the caller
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(k, []), daemon=True) for k in (1, 2)]
    threads.append(threading.Thread(target=node, args=(0, ports[1:]), daemon=True))
    for th in threads:
        th.start()
    try:
        with _connect(ports[0]) as s:
            _send(s, msg)
            t0 = time.perf_counter()
            for _ in range(count):
                _send(s, msg)
            took = time.perf_counter() - t0
    finally:
        for th in threads:
            th.join(10)
        for p in paths:
            p.unlink(missing_ok=True)
    if errors:
        raise errors[0]
    return len(msg) * count / took
