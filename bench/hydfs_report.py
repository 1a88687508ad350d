"""Tables (rich and markdown), goal verdicts and PNG plots for bench/hydfs.py."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, pct

KB, MB = 1 << 10, 1 << 20
GOAL_REREP = 2.0      # re-replication transfer of 20 MB <= 2x a raw loopback copy
GOAL_APPEND = 0.5     # 1 MB append throughput >= half the raw loopback rate
GOAL_MERGE = 0.005    # merge of agreeing replicas < 5 ms


def human(n: float) -> str:
    for unit, k in (("MB", MB), ("KB", KB)):
        if n >= k:
            v = n / k
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


def ms(s: float) -> str:
    return f"{s * 1e3:.1f}" if s < 10 else f"{s * 1e3:.0f}"


def ms_sd(values: list[float]) -> str:
    m, sd = mean_sd(values)
    return f"{m * 1e3:.1f} ± {sd * 1e3:.1f}"


def s_sd(values: list[float]) -> str:
    m, sd = mean_sd(values)
    return f"{m:.3f} ± {sd:.3f}"


def mean_sd(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def ratio(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:.0f}x" if x >= 100 else f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def num(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


class Section:
    def __init__(self, key: str, title: str, cols: list[str], note: str = "") -> None:
        self.key, self.title, self.cols, self.note = key, title, cols, note
        self.rows: list[list[str]] = []

    def add(self, *cells: Any) -> None:
        self.rows.append([str(c) for c in cells])

    def rich(self) -> Table:
        t = Table(title=self.title, title_justify="left")
        for c in self.cols:
            t.add_column(c)
        for r in self.rows:
            t.add_row(*r)
        return t

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.cols) + " |")
        lines.append("|" + "|".join("---" for _ in self.cols) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


def _groups(recs: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in recs:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


# ----------------------------------------------------------------------------- tables


def kind_order(kind: str) -> tuple[int, str]:
    return (0 if kind == "replica" else 1 if kind == "primary" else 2, kind)


def sections(res: dict[str, Any]) -> tuple[list[Section], list[Section], list[tuple[str, str, str, str, str]]]:
    """(tables, goal tables, goal rows) from the raw results."""
    base = res["base"]
    secs: list[Section] = []
    goals: list[tuple[str, str, str, str, str]] = []
    if "1" in res:
        s1 = Section("1", "Experiment 1: re-replication after SIGKILL (seconds, mean ± stdev)",
                     ["size", "killed", "completed", "total (incl. detection)", "detection (first node)",
                      "detection (primary)", "transfer (excl. detection)", "transfer after the primary's detection",
                      "raw loopback copy (ms)", "raw copy into a new file (ms)", "zero-copy into a new file (ms)",
                      "copy + fsync (ms)",
                      "disk write + fsync (ms)", "transfer / raw copy", "transfer / copy into a file",
                      "transfer / copy+fsync", "worst node stall (s)", "false failure declarations"],
                     "Detection: SIGKILL to the first `member fail` log line of any node (and of the primary that "
                     "re-replicates). Transfer: from the first detection to the moment the primary logged the "
                     "file's new in-sync set of 3 live replicas (`hydfs isr`; the ratios use the transfer after "
                     "the primary's own detection). `+N files`: the same with N other files in HyDFS. "
                     "Completed: runs with 3 live replicas within the timeout (times are over those). Stall: the "
                     "slowest answer of any live node to a trivial RPC, polled every 50 ms during the run. False "
                     "failure declarations: `member fail` lines about live nodes (all runs of the row).")
        s2 = Section("2", "Experiment 2: re-replication bandwidth (bytes the new replica stored / time from the "
                     "primary's detection to the new in-sync set)",
                     ["size", "killed", "bytes stored", "HyDFS MB/s", "raw loopback copy MB/s", "HyDFS / raw",
                      "copy + fsync MB/s", "HyDFS / copy+fsync"])
        for (size, kind), rs in sorted(_groups(res["1"], "size", "kind").items(),
                                       key=lambda kv: (kind_order(kv[0][1]), kv[0][0])):
            every = rs
            rs = [r for r in rs if r.get("ok", True)] or [{**every[0], **dict.fromkeys(
                ("total", "detect", "detect_primary", "transfer", "transfer_primary"), math.nan)}]
            tr = [r["transfer"] for r in rs]
            raw, rawf, disk = base["copy"][size], base["copy_fsync"][size], base["disk"][size]
            rawc = base.get("copy_file", {}).get(size, math.nan)
            rawz = base.get("zero_copy", {}).get(size, math.nan)
            mt = mean_sd([r["transfer_primary"] for r in rs])[0]
            s1.add(human(size), kind, f"{sum(r.get('ok', True) for r in every)}/{len(every)}",
                   s_sd([r["total"] for r in rs]), s_sd([r["detect"] for r in rs]),
                   s_sd([r["detect_primary"] for r in rs]), s_sd(tr), s_sd([r["transfer_primary"] for r in rs]),
                   f"{raw * 1e3:.3g}", f"{rawc * 1e3:.3g}", f"{rawz * 1e3:.3g}", f"{rawf * 1e3:.3g}",
                   f"{disk * 1e3:.3g}",
                   ratio(mt / raw), ratio(mt / rawc), ratio(mt / rawf),
                   f"{max(r.get('stall', math.nan) for r in every):.2f}", sum(r.get("flaps", 0) for r in every))
            bw = [r["bytes"] / r["transfer_primary"] / MB for r in rs if r["transfer_primary"] > 0]
            if not bw:
                continue
            m, sd = mean_sd(bw)
            s2.add(human(size), kind, human(median([r["bytes"] for r in rs])), f"{num(m)} ± {num(sd)}",
                   num(size / raw / MB), f"{m / (size / raw / MB):.2g}x", num(size / rawf / MB),
                   f"{m / (size / rawf / MB):.2g}x")
            if size == 20 * MB and kind == "replica":
                goals.append(("re-replication of 20 MB (after the primary's detection) <= 2x raw loopback copy",
                              f"{mt * 1e3:.1f} ms", f"{raw * 1e3:.1f} ms", ratio(mt / raw),
                              verdict(mt / raw <= GOAL_REREP)))
                goals.append(("  the same against the raw copy into a new file (the same bytes, to disk, no "
                              "fsync)", f"{mt * 1e3:.1f} ms", f"{rawc * 1e3:.1f} ms", ratio(mt / rawc),
                              verdict(mt / rawc <= GOAL_REREP)))
                goals.append(("  floor on recycled pages: a zero-copy copy into a new file (sendfile + splice, no "
                              "checks), the pages of the previous copy freed just before",
                              f"{rawz * 1e3:.1f} ms", f"{raw * 1e3:.1f} ms",
                              ratio(rawz / raw), "(floor)"))
                goals.append(("  HyDFS against that floor", f"{mt * 1e3:.1f} ms", f"{rawz * 1e3:.1f} ms",
                              ratio(mt / rawz), "-"))
                recy = [r["transfer_primary"] for r in res["1"]
                        if r["size"] == size and r["kind"] == "replica +recycled pages" and r.get("ok", True)]
                if recy:
                    mr = mean_sd(recy)[0]
                    goals.append(("  diagnostic: the same kill with 40 MB of page cache freed just before it (the new "
                                  f"replica writes into recycled pages; {len(recy)} runs)", f"{mr * 1e3:.1f} ms",
                                  f"{raw * 1e3:.1f} ms", ratio(mr / raw), verdict(mr / raw <= GOAL_REREP)))
                nf = base.get("new_file")
                if nf and nf["size"] == size:
                    goals.append(("  floor on settled memory: writing the 20 MB into a new file after 3 s of idle "
                                  "memory (page cache only, no network; what a new replica's pages cost here)",
                                  f"{nf['settled'] * 1e3:.1f} ms", f"{raw * 1e3:.1f} ms",
                                  ratio(nf["settled"] / raw), "(floor)"))
                    goals.append(("  the same write right after 20 MB were freed (the pages recycled at once)",
                                  f"{nf['recycled'] * 1e3:.1f} ms", f"{raw * 1e3:.1f} ms",
                                  ratio(nf["recycled"] / raw), "-"))
        s3 = Section("1r", "Experiment 1: restarting the killed node afterwards (it rejoins and takes its files back)",
                     ["runs", "converged (all nodes see all alive)", "time (s, max)", "worst node stall (s)",
                      "false failure declarations"],
                     "The restart waits up to 20 s (60 s for the loaded runs) until every node sees every node alive.")
        for label, rs in (("clean runs", [r for r in res["1"] if "files" not in r["kind"]]),
                          ("with the files of experiments 5-7", [r for r in res["1"] if "files" in r["kind"]])):
            rj = [r["rejoin"] for r in rs if r.get("rejoin")]
            if rj:
                s3.add(f"{label}: {len(rj)}", f"{sum(x['converged'] for x in rj)}/{len(rj)}",
                       f"{max(x['seconds'] for x in rj):.1f}", f"{max(x['stall'] for x in rj):.2f}",
                       sum(x["flaps"] for x in rj))
        secs += [s1, s2, s3]
    idle = median(res["b"]["merges"]) if "b" in res else float("nan")
    for key, size in (("3", 4 * KB), ("4", 40 * KB)):
        if key not in res:
            continue
        rate = base["rate"][size] / MB
        s = Section(key, f"Experiment {key}: merge right after {res[key][0]['appends']} appends of {human(size)}",
                    ["clients", "runs", "appends (s)", "append MB/s", "append / raw loopback rate",
                     "append latency median / p99 (ms)", "merge (ms)", "merge / idle merge"],
                    f"Raw loopback rate: sequential {human(size)} request/response messages, {rate:.0f} MB/s. "
                    f"Idle merge: median merge of replicas that already agree ({idle * 1e3:.2f} ms).")
        for (n,), rs in sorted(_groups(res[key], "clients").items()):
            mb = mean_sd([r["mbps"] for r in rs])
            mg = mean_sd([r["merge"] for r in rs])[0]
            s.add(n, len(rs), s_sd([r["append_s"] for r in rs]), f"{mb[0]:.1f} ± {mb[1]:.1f}",
                  f"{mb[0] / rate:.3f}", f"{median([r['lat_median'] for r in rs]) * 1e3:.1f} / "
                  f"{max(r['lat_p99'] for r in rs) * 1e3:.1f}", ms_sd([r["merge"] for r in rs]), ratio(mg / idle))
        secs.append(s)
    rt = base["get_rt"]
    for key, dist in (("5", "uniform"), ("6", "zipf")):
        if key not in res:
            continue
        n = res[key][0]
        gets = round(n["seconds"] / n["per_get_ms"] * 1e3)
        s = Section(key, f"Experiment {key}: {gets} sequential gets, {dist} access, 4 KB files",
                    ["cache (% of data)", "runs", "time (s)", "ms / get", "hit rate", "vs raw round trips",
                     "speed-up vs no cache"],
                    f"Raw round trips: {gets} sequential 4 KB request/response messages over loopback take "
                    f"{gets * rt:.3f} s.")
        groups = _groups(res[key], "cache")
        t0 = mean_sd([r["seconds"] for r in groups[(0,)]])[0] if (0,) in groups else float("nan")
        for (c,), rs in sorted(groups.items()):
            t = mean_sd([r["seconds"] for r in rs])[0]
            s.add(f"{c} %", len(rs), s_sd([r["seconds"] for r in rs]),
                  f"{statistics.fmean(r['per_get_ms'] for r in rs):.2f}",
                  f"{statistics.fmean(r['hit_rate'] for r in rs):.0%}", ratio(t / (gets * rt)), f"{t0 / t:.2f}x")
        secs.append(s)
    if "7" in res:
        r0 = res["7"][0]
        s = Section("7", f"Experiment 7: {r0['gets']} gets + {r0['appends']} appends of 4 KB, interleaved at random",
                    ["access", "cache", "runs", "time (s)", "get (ms)", "append (ms)", "hit rate",
                     "vs raw round trips", "speed-up vs no cache"])
        groups = _groups(res["7"], "dist", "cache")
        for (dist, c), rs in sorted(groups.items()):
            t = mean_sd([r["seconds"] for r in rs])[0]
            t0 = mean_sd([r["seconds"] for r in groups.get((dist, 0), rs)])[0]
            ops = r0["gets"] + r0["appends"]
            s.add(dist, f"{c} %", len(rs), s_sd([r["seconds"] for r in rs]),
                  f"{statistics.fmean(r['get_ms'] for r in rs):.2f}",
                  f"{statistics.fmean(r['append_ms'] for r in rs):.2f}",
                  f"{statistics.fmean(r['hit_rate'] for r in rs):.0%}", ratio(t / (ops * rt)), f"{t0 / t:.2f}x")
        secs.append(s)
    if "b" in res:
        rates = res["b"]["mb_append_rates"]
        raw_rate = base["rate"][MB] / MB
        r = median(rates)
        goals.append(("1 MB append throughput >= 0.5x raw loopback rate (one writer)", f"{r:.1f} MB/s",
                      f"{raw_rate:.0f} MB/s", f"{r / raw_rate:.3f}x", verdict(r / raw_rate >= GOAL_APPEND)))
        par = res["b"].get("mb_append_concurrent")
        if par:
            rp = median(par)
            goals.append(("  the same with 4 writers at once", f"{rp:.1f} MB/s", f"{raw_rate:.0f} MB/s",
                          f"{rp / raw_rate:.3f}x", verdict(rp / raw_rate >= GOAL_APPEND)))
        bound = base.get("replicated", {}).get(res.get("fsync", "always"))
        if bound:
            bound /= MB
            goals.append(("  bound: the raw 3-way replicated copy (one writer; plain threads and sockets, the bytes "
                          "through user space)",
                          f"{bound:.0f} MB/s", f"{raw_rate:.0f} MB/s", f"{bound / raw_rate:.3f}x",
                          "(bound)"))
            goals.append(("  HyDFS (one writer) against that bound", f"{r:.1f} MB/s", f"{bound:.0f} MB/s",
                          f"{r / bound:.3f}x", "-"))
        zc = base.get("replicated_zero_copy")
        if zc and res.get("fsync", "always") == "interval":
            zc /= MB
            goals.append(("  the same copy with no user-space copy past the client (splice + tee; no framing, "
                          "no checks)", f"{zc:.0f} MB/s", f"{raw_rate:.0f} MB/s", f"{zc / raw_rate:.3f}x",
                          "-"))
        grow = base.get("growing")
        if grow:
            gs, gr = grow["settled"] / MB, grow["recycled"] / MB
            goals.append(("  one file growing by 1 MB per write (each replica of an append grows one): after 3 s "
                          f"of idle memory; {gr:.0f} MB/s on pages freed just before",
                          f"{gs:.0f} MB/s", f"{raw_rate:.0f} MB/s", f"{gs / raw_rate:.3f}x", "-"))
        mg = res["b"]["merges"]
        goals.append((f"merge of agreeing replicas < 5 ms (median of {len(mg)})", f"{median(mg) * 1e3:.2f} ms",
                      "5 ms", ratio(median(mg) / GOAL_MERGE), verdict(median(mg) < GOAL_MERGE)))
        goals.append((f"merge of agreeing replicas < 5 ms (p99 of {len(mg)})", f"{pct(mg, 99) * 1e3:.2f} ms",
                      "5 ms", ratio(pct(mg, 99) / GOAL_MERGE), verdict(pct(mg, 99) < GOAL_MERGE)))
    if "b" in res and res["b"].get("mb_append_cpu"):
        wall = 1 / median(res["b"]["mb_append_rates"])
        c = Section("cpu", "Where a 1 MB append goes: CPU time per append (median of 3 runs)",
                    ["process", "CPU ms per 1 MB append", "share of the append's wall time"],
                    f"Wall time per append: {wall * 1e3:.1f} ms (2 cores shared by the client, 5 nodes, 5 redis).")
        for who, vals in res["b"]["mb_append_cpu"].items():
            c.add(who, f"{median(vals) * 1e3:.1f}", f"{median(vals) / wall:.0%}")
        secs.append(c)
    if base.get("primitives"):
        pr = Section("prim", "Cost of one pass over 1 MB in this Python (baseline for the data path)",
                     ["operation", "ms per MB"])
        for op, sec in base["primitives"].items():
            pr.add(op, f"{sec * 1e3:.2f}")
        secs.append(pr)
    g = Section("goals", "Goals", ["goal", "HyDFS", "baseline", "ratio", "verdict"])
    for row in goals:
        g.add(*row)
    return secs, [g] if goals else [], goals


# ----------------------------------------------------------------------------- plots


def size_ticks(ax: Any, sizes: list[int]) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xticks(sizes, [human(x) for x in sizes], rotation=35, ha="right")
    ax.xaxis.set_minor_locator(NullLocator())


def plots(res: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)

    base = res["base"]
    if "1" in res:
        fig, ax = plt.subplots(figsize=(8, 5))
        kinds = sorted({r["kind"] for r in res["1"]}, key=kind_order)
        colors = ["tab:blue", "tab:red", "tab:purple", "tab:green", "tab:brown"]
        for kind, marker, color in zip(kinds, "os^vD", colors, strict=False):
            groups = sorted((k[0], v) for k, v in _groups(res["1"], "size", "kind").items() if k[1] == kind)
            groups = [(sz, ok) for sz, rs in groups if (ok := [r for r in rs if r.get("ok", True)])]
            xs = [sz for sz, _ in groups]
            for key, label, style in (("total", "incl. detection", "-"),
                                      ("transfer_primary", "after the primary's detection", "--")):
                ms_ = [mean_sd([r[key] for r in rs]) for _, rs in groups]
                ax.errorbar(xs, [m for m, _ in ms_], yerr=[sd for _, sd in ms_], marker=marker, linestyle=style,
                            color=color, capsize=4, label=f"kill {kind}, {label}")
        sizes = sorted(base["copy"])
        ax.plot(sizes, [base["copy"][s] for s in sizes], ":", color="gray", label="raw loopback copy")
        if base.get("copy_file"):
            ax.plot(sizes, [base["copy_file"][s] for s in sizes], "--", color="gray", label="raw copy into a new file")
        ax.plot(sizes, [base["copy_fsync"][s] for s in sizes], "-.", color="black", label="loopback copy + fsync")
        ax.set_xscale("log")
        ax.set_yscale("log")
        size_ticks(ax, sizes)
        ax.set_xlabel("file size")
        ax.set_ylabel("seconds (log)")
        ax.set_title("1: re-replication time after SIGKILL (5 nodes, mean ± stdev)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "exp1_rereplication.png")

        fig, ax = plt.subplots(figsize=(8, 5))
        for kind, marker, color in zip(kinds, "os^vD", colors, strict=False):
            groups = sorted((k[0], v) for k, v in _groups(res["1"], "size", "kind").items() if k[1] == kind)
            groups = [(sz, ok) for sz, rs in groups if (ok := [r for r in rs if r.get("ok", True)])]
            bw = [mean_sd([r["bytes"] / r["transfer_primary"] / MB for r in rs]) for _, rs in groups]
            ax.errorbar([sz for sz, _ in groups], [m for m, _ in bw], yerr=[sd for _, sd in bw], marker=marker,
                        color=color, capsize=4, label=f"HyDFS re-replication, kill {kind}")
        ax.plot(sizes, [s / base["copy"][s] / MB for s in sizes], ":", color="gray", label="raw loopback copy")
        ax.plot(sizes, [s / base["copy_fsync"][s] / MB for s in sizes], "-.", color="black",
                label="loopback copy + fsync")
        ax.set_xscale("log")
        ax.set_yscale("log")
        size_ticks(ax, sizes)
        ax.set_xlabel("file size")
        ax.set_ylabel("MB/s (log)")
        ax.set_title("2: re-replication bandwidth (bytes stored / transfer time)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "exp2_bandwidth.png")
    idle = median(res["b"]["merges"]) if "b" in res else None
    for key, size in (("3", 4 * KB), ("4", 40 * KB)):
        if key not in res:
            continue
        groups = sorted(_groups(res[key], "clients").items())
        xs = [k[0] for k, _ in groups]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.5))
        mg = [mean_sd([r["merge"] * 1e3 for r in rs]) for _, rs in groups]
        a1.errorbar(xs, [m for m, _ in mg], yerr=[sd for _, sd in mg], marker="o", capsize=4, label="merge")
        if idle is not None:
            a1.axhline(idle * 1e3, color="gray", linestyle=":", label="merge of agreeing replicas (median)")
        a1.axhline(GOAL_MERGE * 1e3, color="red", linestyle="--", label="5 ms goal")
        a1.set_xlabel("concurrent clients")
        a1.set_ylabel("merge time (ms)")
        a1.set_ylim(bottom=0)
        a1.set_xticks(xs)
        a1.legend(fontsize=8)
        a1.grid(True, alpha=0.3)
        ap = [mean_sd([r["append_s"] for r in rs]) for _, rs in groups]
        a2.errorbar(xs, [m for m, _ in ap], yerr=[sd for _, sd in ap], marker="o", capsize=4, color="tab:green")
        a2.set_xlabel("concurrent clients")
        a2.set_ylabel(f"time for the {res[key][0]['appends']} appends (s)")
        a2.set_ylim(bottom=0)
        a2.set_xticks(xs)
        a2.grid(True, alpha=0.3)
        fig.suptitle(f"{key}: merge after {res[key][0]['appends']} appends of {human(size)} (mean ± stdev)")
        save(fig, f"exp{key}_merge_{human(size).replace(' ', '')}.png")
    for key, dist in (("5", "uniform"), ("6", "zipf")):
        if key not in res:
            continue
        groups = sorted(_groups(res[key], "cache").items())
        xs = [k[0] for k, _ in groups]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        t = [mean_sd([r["seconds"] for r in rs]) for _, rs in groups]
        ax.errorbar(xs, [m for m, _ in t], yerr=[sd for _, sd in t], marker="o", capsize=4, label="time for the gets")
        gets = round(res[key][0]["seconds"] / res[key][0]["per_get_ms"] * 1e3)
        ax.axhline(gets * base["get_rt"], color="gray", linestyle=":", label="raw loopback round trips")
        ax.set_xlabel("client cache size (% of the data)")
        ax.set_ylabel(f"time for {gets} gets (s)")
        ax.set_ylim(bottom=0)
        ax.set_xticks(xs)
        ax.grid(True, alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(xs, [statistics.fmean(r["hit_rate"] for r in rs) * 100 for _, rs in groups], "s--",
                 color="tab:orange", label="hit rate")
        ax2.set_ylabel("cache hit rate (%)")
        ax2.set_ylim(0, 100)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
        ax.set_title(f"{key}: sequential gets, {dist} access over 4 KB files (mean ± stdev)")
        save(fig, f"exp{key}_gets_{dist}.png")
    if "7" in res:
        groups = _groups(res["7"], "dist", "cache")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        dists = ["uniform", "zipf"]
        caches = sorted({key[1] for key in groups})
        for k, c in enumerate(caches):
            rows = [groups.get((d, c), []) for d in dists]
            xs = [i + 0.38 * k for i in range(len(dists))]
            gets = [statistics.fmean(r["get_s"] for r in rs) if rs else 0.0 for rs in rows]
            apps = [statistics.fmean(r["append_s"] for r in rs) if rs else 0.0 for rs in rows]
            tot = [mean_sd([r["seconds"] for r in rs]) for rs in rows]
            ax.bar(xs, gets, width=0.36, color=["tab:blue", "tab:orange"][k % 2], label=f"cache {c} %: gets")
            ax.bar(xs, apps, width=0.36, bottom=gets, color=["tab:blue", "tab:orange"][k % 2], alpha=0.45,
                   hatch="//", label=f"cache {c} %: appends")
            ax.errorbar(xs, [m for m, _ in tot], yerr=[sd for _, sd in tot], fmt="none", ecolor="black", capsize=4)
        ax.set_xticks([i + 0.19 for i in range(len(dists))], dists)
        ax.set_ylabel("time (s): gets + appends, error bar on the total")
        r0 = res["7"][0]
        ax.set_title(f"7: {r0['gets']} gets + {r0['appends']} appends (4 KB), interleaved at random")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "exp7_mixed.png")
    return made


# ----------------------------------------------------------------------------- output


def report(res: dict[str, Any], plan: Any, out: Path, console: Console) -> None:
    out.mkdir(parents=True, exist_ok=True)
    secs, goal_secs, goals = sections(res)
    for s in [*secs, *goal_secs]:
        console.print(s.rich())
    made = plots(res, out)
    base = res["base"]
    lines = ["# HyDFS benchmark results", "", f"- command: `{res['command']}`", f"- machine: {res['machine']}",
             f"- runtime: {res['runtime_s']:.0f} s", "",
             "Baselines (same run): raw loopback copy of 20 MB "
             f"{base['copy'].get(20 * MB, float('nan')) * 1e3:.1f} ms; 1 MB request/response loopback rate "
             f"{base['rate'][MB] / MB:.0f} MB/s; 4 KB round trip {base['get_rt'] * 1e6:.0f} µs.", ""]
    for s in [*goal_secs, *secs]:
        lines.append(s.markdown())
    if res.get("errors"):
        lines += ["### Errors", ""] + [f"- {e}" for e in res["errors"]] + [""]
    lines += ["### Plots", ""] + [f"- `{name}`" for name in made]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    def keyfix(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): keyfix(v) for k, v in x.items()}
        if isinstance(x, list):
            return [keyfix(v) for v in x]
        return x

    (out / "results.json").write_text(json.dumps(keyfix(res), indent=1))
    console.print(f"wrote {out / 'results.md'}, results.json and {len(made)} plots")
    for g in goals:
        console.print(f"goal: {g[0]}: HyDFS {g[1]} vs {g[2]} -> {g[3]} ({g[4]})", highlight=False)


def main() -> None:
    """Re-render tables, plots and results.md from a saved results.json (no cluster needed):
    python bench/hydfs_report.py bench/out/hydfs/results.json"""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("results", type=Path, help="results.json written by bench/hydfs.py")
    a = ap.parse_args()
    res = json.loads(a.results.read_text())
    for k in ("copy", "copy_file", "zero_copy", "copy_fsync", "disk", "rate"):
        if k in res["base"]:
            res["base"][k] = {int(s): v for s, v in res["base"][k].items()}
    report(res, None, a.results.parent, Console(width=200))


if __name__ == "__main__":
    main()
