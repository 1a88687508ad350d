"""The replica side of one file: what any holder does with a primary's messages.

A replica obeys exactly one primary per term (the one it promised the term to), rejects lower
terms, never accepts an entry that leaves a gap, and truncates only a suffix its primary shows to
be divergent. Everything it acknowledges is in storage before the acknowledgement is sent. It carries
out a trim marker once its primary shows the marker committed; a copy that ends below its primary's
first entry is *installed* (Raft's InstallSnapshot, the retained entries being the snapshot): it drops
every entry and continues from the primary's first one.
"""

from __future__ import annotations

import contextlib

from hydfs.context import Host, report_of
from hydfs.entries import Entry, check_contiguous, term_at
from hydfs.messages import Msg, entries_wire, runs_wire
from hydfs.storage import FileMeta, apply_trims


def _promise(h: Host, name: str, term: int, src: str) -> tuple[FileMeta, bool]:
    """The file's meta after honouring ``term`` from ``src``, and whether ``src`` may lead it."""
    meta = h.storage.meta(name) or FileMeta()
    if term < meta.term or (term == meta.term and meta.leader not in ("", src)):
        return meta, False
    if term > meta.term or meta.leader != src:
        meta.term, meta.leader = term, src
        h.storage.put_meta(name, meta)
    if src == h.primary_of(name):
        h.vol(name).confirmed = (src, h.view_epoch)
    return meta, True


def _renew(h: Host, name: str, meta: FileMeta, created: int) -> None:
    """Start over as incarnation ``created`` (the primary's file is a different one than ours)."""
    h.storage.truncate(name, 0)
    meta.created, meta.deleted = created, None
    h.storage.put_meta(name, meta)
    h.vol(name).commit = 0


def on_prepare(h: Host, src: str, m: Msg) -> None:
    name = m["f"]
    meta, ok = _promise(h, name, m["term"], src)
    rep = report_of(h.storage, name, meta, h.vol(name).trusted)
    h.send(src, {"t": "prepared", "f": name, "term": m["term"], "ok": ok, "promised": meta.term,
                 **rep.fields()})


def on_fetch(h: Host, src: str, m: Msg) -> None:
    name = m["f"]
    meta = h.storage.meta(name)
    ok = meta is not None and meta.term == m["term"] and meta.leader == src
    entries: list[Entry] = []
    if ok:
        stop = min(m["stop"], m["start"] + h.config.batch_entries)
        entries = h.storage.read(name, m["start"], stop, h.config.batch_bytes)
    h.send(src, {"t": "fetched", "f": name, "term": m["term"], "ok": ok, "start": m["start"],
                 "entries": entries_wire(entries)})


def on_append(h: Host, src: str, m: Msg) -> bool:
    """Returns False for a message that is well-formed but self-contradictory (counted by caller)."""
    name, entries, prev = m["f"], m["entries"], m["prev"]
    base = m.get("base")
    if not check_contiguous(entries, prev + 1) or any(e.term > m["term"] for e in entries) or (
            entries and entries[0].term < m["prev_term"]) or m["top"] < prev + len(entries) or (
            base is not None and term_at(base, prev, prev) != m["prev_term"]):
        return False
    meta, ok = _promise(h, name, m["term"], src)
    vol = h.vol(name)
    if not ok:
        last, _ = h.storage.last(name)
        h.send(src, _ack(m, False, meta.term, 0, last, None, meta, vol.trusted, h.storage.first(name)))
        return True
    if meta.created != m["created"] or meta.deleted is not None:
        _renew(h, name, meta, m["created"])
    last, last_term = h.storage.last(name)
    if prev > last or (term_at(h.storage.runs(name), last, prev) if prev < last else last_term) != m["prev_term"]:
        if base is None:
            h.send(src, _ack(m, False, meta.term, 0, last, h.storage.runs(name), meta, vol.trusted,
                             h.storage.first(name)))
            return True
        # The primary has nothing below prev + 1 (trimmed: committed), and we lack or contradict prev,
        # so nothing we hold is of use: continue from the primary's first entry.
        h.storage.install(name, prev + 1, base)
        last = prev
    k = 0
    if entries and entries[0].index <= last:
        runs = h.storage.runs(name)
        while k < len(entries) and entries[k].index <= last and (
                term_at(runs, last, entries[k].index) == entries[k].term):
            k += 1
        if k < len(entries) and entries[k].index <= last:
            h.storage.truncate(name, entries[k].index - 1)
    if k < len(entries):
        h.storage.append(name, entries[k:])
    match = prev + len(entries)
    last, _ = h.storage.last(name)
    top = m["top"]
    if last > top and term_at(h.storage.runs(name), last, top + 1) < m["term"]:
        # Past the primary's end and older than its term: a divergent tail nobody acknowledged.
        h.storage.truncate(name, top)
        last = top
    vol.commit = max(vol.commit, min(m["commit"], match))
    with contextlib.suppress(OSError):  # a full disk has no room for the copy: tried again next time
        apply_trims(h.storage, name, min(m["commit"], match))
    h.send(src, _ack(m, True, meta.term, match, last, None, meta, vol.trusted, h.storage.first(name)))
    return True


def _ack(m: Msg, ok: bool, promised: int, match: int, last: int, runs: list[tuple[int, int]] | None,
         meta: FileMeta, trusted: bool, first: int = 1) -> Msg:
    """``first``: our first index, by which the primary tells a trim we have not carried out yet."""
    return {"t": "append_ack", "f": m["f"], "term": m["term"], "ok": ok, "promised": promised,
            "match": match, "last": last, "runs": runs_wire(runs) if runs is not None else None,
            "ver": list(meta.ver) if meta.ver else None, "trusted": trusted, "first": first}


def io_nack(h: Host, m: Msg) -> Msg:
    """The answer to an append this node could not write (full or failing disk): it promises nothing,
    so it may go out although the node's own sync failed, and the primary takes the node out of the set."""
    meta = h.storage.meta(m["f"]) or FileMeta()
    return {**_ack(m, False, meta.term, 0, h.storage.last(m["f"])[0], None, meta, False), "io": True}


def on_set_isr(h: Host, src: str, m: Msg) -> None:
    name = m["f"]
    meta, ok = _promise(h, name, m["term"], src)
    if ok:
        if m["created"] is not None and (meta.created != m["created"] or meta.deleted is not None):
            _renew(h, name, meta, m["created"])
        if meta.ver is None or m["ver"] >= meta.ver:
            meta.ver, meta.isr = m["ver"], m["isr"]
            h.storage.put_meta(name, meta)
            vol = h.vol(name)
            last = h.storage.last(name)[0]
            # A member vouches only while it holds every acknowledged append. It always does when
            # acks wait for fsync; with fsync = "interval" a machine crash can cost it its tail.
            vol.trusted = h.settled() and (h.node_id not in meta.isr or last >= m["commit"])
            if h.node_id in meta.isr:
                vol.commit = max(vol.commit, min(m["commit"], last))
    h.send(src, {"t": "isr_ack", "f": name, "term": m["term"], "ok": ok, "promised": meta.term,
                 "ver": list(m["ver"]), "trusted": h.vol(name).trusted})


def on_delete(h: Host, src: str, m: Msg) -> None:
    name = m["f"]
    meta, ok = _promise(h, name, m["term"], src)
    if ok and meta.deleted != m["at"]:
        h.storage.truncate(name, 0)
        meta.created, meta.deleted = None, m["at"]
        h.storage.put_meta(name, meta)
        h.vol(name).commit = 0
    h.send(src, {"t": "delete_ack", "f": name, "term": m["term"], "ok": ok, "promised": meta.term})


def on_release(h: Host, src: str, m: Msg) -> bool:
    """Drop a copy we no longer own, once the owner's primary says the owners have it. True if dropped."""
    name = m["f"]
    meta = h.storage.meta(name)
    if meta is None or m["term"] < meta.term or src != h.primary_of(name):
        return False
    if h.node_id in h.replicas(name) or h.node_id in m["isr"]:
        return False
    if meta.ver is not None and h.node_id in meta.isr and (m["ver"] is None or m["ver"] <= meta.ver):
        return False  # as far as we know we are in the in-sync set: only a newer set may let us go
    h.storage.drop(name)
    return True
