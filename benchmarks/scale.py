"""Scale on one box: epws-chat holding N idle epws.chat.v1 connections on loopback.

    benchmarks/.venv/bin/python benchmarks/scale.py -n 10000   # after bash benchmarks/run --list

What it does, every step bounded in time and count (docs/performance.md, "Scale on one
box", has the figures and the kernel settings):

1. starts ``epws-chat --loop uvloop --broker memory`` (one process), pinned to core 0,
   with keepalive at ``--ping-period 10 --pong-wait 30`` so that pings to every client
   go out during the measurements, not once a minute;
2. reads the server's RSS, ``/proc/meminfo`` (Slab) and ``/proc/net/sockstat``;
3. starts G load generators (``loadgen -mode scale``, pinned to core 1), each dialing
   its share of the N connections into room ``all`` from its own loopback source
   address (127.0.0.2, 127.0.0.3, ...: each address has the whole ephemeral port range
   for the one server port), and times until every connection has its ``hello`` line;
4. reads the same figures again: their growth divided by N is the memory per
   connection, the server's own (RSS) and the kernel's (slab and TCP buffer pages,
   both ends of each loopback connection: they are in the same kernel);
5. sends one message in room ``all`` (everyone) three times and times, on the wall
   clock every process shares, from the send to its arrival at the last member;
6. opens 1,000 more connections in room ``talk`` and has them send 100 messages/s in
   all for 20 s (each to all 1,000), while the N others idle and answer pings: p50,
   p99 and max delivery latency, and how many pings the idle side answered meanwhile;
7. closes everything, stops the server, prints one JSON object and writes it to
   ``results/scale-N.json``; ``--chart`` draws ``results/scale.png`` from those files.

Why several generators: a process holds at most RLIMIT_NOFILE descriptors, and a
container may cap that below N with no way to raise it (no CAP_SYS_RESOURCE): then
the chat, one process, cannot exceed that limit either, and ``--workers K`` (K
epws-chat processes on one port with SO_REUSEPORT and a Redis broker of their own) is
the only way to go on; the output says which was used. Before it starts, the run
refuses an N whose estimated memory would leave less than 3 GiB available, and while
it connects it stops if available memory falls under 2 GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bench import HERE, LOADGEN, epws_chat_command, free_port, redis_server

TALKERS = 1000
TALK_RATE = 100.0  # messages/s into the talkers' room, in all
TALK_SECONDS = 20.0
FANOUTS = 3
PING_PERIOD = 10.0
EST_KB_PER_CONN = 40  # kernel (both ends) + server + generator, generously: a guard only
FDS_SPARE = 64  # descriptors a process keeps for itself (loop, listener, pipes, logs)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- what the kernel and the processes hold


def meminfo() -> dict[str, int]:
    """/proc/meminfo in kB."""
    out: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        out[name] = int(rest.split()[0])
    return out


def sockstat() -> dict[str, int]:
    """The TCP line of /proc/net/sockstat (mem is in pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            f = line.split()[1:]
            return {f[i]: int(f[i + 1]) for i in range(0, len(f) - 1, 2)}
    return {}


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (the workers of a supervised epws-chat)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def rss_kb_of(pids: list[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def sockets_of(pids: list[int]) -> int:
    """How many sockets these processes hold open (their connections, mostly)."""
    n = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{p}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith("socket:"):
                        n += 1
    return n


def snapshot(server_pid: int, gen_pids: list[int]) -> dict[str, Any]:
    m, s = meminfo(), sockstat()
    pids = tree_pids(server_pid)
    return {
        "server_rss_kb": rss_kb_of(pids),  # the supervisor and its workers, if any
        "server_processes": len(pids),
        "server_sockets": sockets_of(pids),
        "gen_sockets": sockets_of(gen_pids),
        "gen_rss_kb": rss_kb_of(gen_pids),
        "slab_kb": m["Slab"],
        "sunreclaim_kb": m["SUnreclaim"],
        "mem_available_kb": m["MemAvailable"],
        "tcp_mem_pages": s.get("mem", 0),
        "tcp_inuse": s.get("inuse", 0),
        "tcp_alloc": s.get("alloc", 0),
    }


# ---- the generators


class Gen:
    """One loadgen -mode scale process and the JSON lines it prints."""

    def __init__(self, index: int, cmd: list[str]) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.backlog: list[dict[str, Any]] = []  # lines that came before they were asked for
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))
        self.lines.put({"phase": "exit", "error": f"generator {self.index} exited"})

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, phase: str, timeout: float) -> dict[str, Any]:
        for i, d in enumerate(self.backlog):
            if d.get("phase") == phase:
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"generator {self.index}: no {phase!r} in {timeout:.0f} s")
            try:
                d = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if d.get("phase") == phase:
                return d
            if "error" in d and d.get("phase") in (None, "exit"):
                raise RuntimeError(f"generator {self.index}: {d['error']}")
            self.backlog.append(d)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send("quit")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


# ---- the server


@contextlib.contextmanager
def chat_server(
    workers: int, ping_period: float, logfile: IO[bytes]
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """epws-chat on 127.0.0.1, one process (memory broker) or `workers` with Redis."""
    port = free_port()
    cmd = [
        *epws_chat_command(),
        "--addr",
        f"127.0.0.1:{port}",
        "--loop",
        "uvloop",
        "--log-level",
        "WARNING",
        "--shutdown-timeout",
        "2",
        "--ping-period",
        str(ping_period),
        "--pong-wait",
        str(3 * ping_period),
    ]
    with contextlib.ExitStack() as stack:
        if workers > 1:
            cmd += [
                "--workers",
                str(workers),
                "--broker",
                stack.enter_context(redis_server(logfile)),
            ]
        else:
            cmd = ["taskset", "-c", "0", *cmd, "--broker", "memory"]
        logfile.write(f"=== {' '.join(cmd)}\n".encode())
        logfile.flush()
        proc = subprocess.Popen(
            cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"epws-chat exited with {proc.returncode}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("epws-chat did not listen in 30 s") from None
                    time.sleep(0.1)
            time.sleep(1.0 if workers == 1 else 3.0)  # every worker up, the probe gone
            yield proc, port
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# ---- the run


def plan(n: int, workers_opt: str) -> tuple[int, int, int]:
    """(server processes, generator processes, descriptor limit) for n connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by all
    per_proc = hard - FDS_SPARE  # a process's own descriptors: loop, listener, pipes
    if per_proc < 2 * TALKERS:
        raise SystemExit(f"open-file limit {hard} is too low for this benchmark")
    total = n + TALKERS
    if workers_opt == "auto":
        # SO_REUSEPORT spreads connections by a hash of their addresses: evenly, but
        # not exactly, so each worker is planned 5 % below its limit.
        workers = 1 if total <= per_proc else math.ceil(total / (per_proc * 0.95))
    else:
        workers = int(workers_opt)
        fits = total <= per_proc if workers == 1 else total / workers <= per_proc * 0.95
        if not fits:
            raise SystemExit(
                f"{total:,} connections ({n:,} + {TALKERS:,} talkers) do not fit in "
                f"{workers} epws-chat process(es): each may hold at most {hard:,} "
                "descriptors (RLIMIT_NOFILE hard limit), which a process without "
                "CAP_SYS_RESOURCE cannot raise; use --workers auto or a lower -n"
            )
    # Each generator: its share (the first also the talkers) within its own
    # descriptor limit and within one source address's ephemeral ports.
    lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    per_gen = min(per_proc - TALKERS, hi - lo - 500)
    gens = max(1, math.ceil(n / per_gen))
    return workers, gens, hard


def run(
    n: int, workers_opt: str, out_dir: Path, ping_period: float, talk_seconds: float
) -> dict[str, Any]:
    if not LOADGEN.exists():
        raise SystemExit(f"{LOADGEN} is missing: run `bash benchmarks/run --list` first")
    workers, gens, fd_limit = plan(n, workers_opt)
    avail = meminfo()["MemAvailable"]
    estimate = (n + TALKERS) * EST_KB_PER_CONN
    if avail - estimate < 3 * 1024 * 1024:
        raise SystemExit(
            f"{n:,} connections need about {estimate / 1e6:.1f} GB; "
            f"{avail / 1e6:.1f} GB available leaves under 3 GiB: not started"
        )
    log(f"N={n:,}: {workers} epws-chat process(es), {gens} generator(s), fd limit {fd_limit:,}")
    result: dict[str, Any] = {
        "n": n,
        "talkers": TALKERS,
        "server_processes": workers,
        "broker": "redis" if workers > 1 else "memory",
        "generators": gens,
        "fd_limit": fd_limit,
        "ping_period_s": ping_period,
        "talk_seconds": talk_seconds,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_before": os.getloadavg()[0],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    with (
        (logs / f"scale-{n}.log").open("ab") as logfile,
        chat_server(workers, ping_period, logfile) as (
            server,
            port,
        ),
    ):
        before = snapshot(server.pid, [])
        shares = [n // gens + (1 if i < n % gens else 0) for i in range(gens)]
        gen_list: list[Gen] = []
        try:
            t0 = time.monotonic()
            for i, share in enumerate(shares):
                cmd = [
                    str(LOADGEN),
                    "-mode",
                    "scale",
                    "-url",
                    f"ws://127.0.0.1:{port}/ws",
                    "-conns",
                    str(share),
                    "-room",
                    "all",
                    "-srcaddr",
                    f"127.0.0.{2 + i}",
                    "-dialconc",
                    str(max(8, 64 // gens)),
                    "-deadline",
                    str(int(900 + n / 100)),
                ]
                if workers == 1:
                    cmd = ["taskset", "-c", "1", *cmd]
                gen_list.append(Gen(i, cmd))
            connect_timeout = 60 + n / 100  # 100 handshakes/s: a machine in trouble
            readies = []
            for g in gen_list:
                while True:
                    left = connect_timeout - (time.monotonic() - t0)
                    try:
                        readies.append(g.expect("ready", timeout=min(max(left, 0.1), 1.0)))
                        break
                    except RuntimeError:
                        if g.proc.poll() is not None or left <= 0:
                            raise
                        if meminfo()["MemAvailable"] < 2 * 1024 * 1024:
                            raise RuntimeError("available memory under 2 GiB: stopped") from None
            result["connect_s"] = time.monotonic() - t0
            result["open"] = sum(r["open"] for r in readies)
            result["joined"] = sum(r["joined"] for r in readies)
            result["failed"] = sum(r["failed"] for r in readies)
            errs = [r["first_error"] for r in readies if r.get("first_error")]
            if errs:
                result["first_error"] = errs[0]
            log(
                f"connected {result['joined']:,}/{n:,} in {result['connect_s']:.1f} s "
                f"({result['failed']:,} failed)"
            )
            time.sleep(3.0)  # joins' history tasks done, allocator settled
            gen_pids = [g.proc.pid for g in gen_list]
            after = snapshot(server.pid, gen_pids)
            result["before"], result["after"] = before, after
            # Per connection the server really holds (it may have dropped some), and,
            # for the kernel, per pair of sockets it allocated (both ends).
            held = max(after["server_sockets"] - before["server_sockets"], 1)
            pairs = max((after["tcp_alloc"] - before["tcp_alloc"]) / 2, 1)
            result["server_held"] = held
            result["server_kb_per_conn"] = (
                (after["server_rss_kb"] - before["server_rss_kb"]) * 1.024 / held
            )
            result["slab_kb_per_conn"] = (after["slab_kb"] - before["slab_kb"]) * 1.024 / pairs
            result["tcp_buf_kb_per_conn"] = (
                (after["tcp_mem_pages"] - before["tcp_mem_pages"]) * 4.096 / pairs
            )
            result["gen_kb_per_conn"] = after["gen_rss_kb"] * 1.024 / max(after["gen_sockets"], 1)
            log(f"the server holds {held:,} connections, the generators {after['gen_sockets']:,}")
            log(
                f"memory per connection: server {result['server_kb_per_conn']:.2f} KB, "
                f"kernel slab {result['slab_kb_per_conn']:.2f} KB (both ends), "
                f"TCP buffers {result['tcp_buf_kb_per_conn']:.3f} KB"
            )

            fan = []
            for k in range(1, FANOUTS + 1):
                for g in gen_list:
                    g.send(f"expect {k}")
                time.sleep(0.3)
                gen_list[0].send(f"fanout {k}")
                sent = gen_list[0].expect("sent", 10)
                reps = [g.expect("fanout", 40) for g in gen_list]
                last = max(r["last_ns"] for r in reps)
                got, want = sum(r["got"] for r in reps), sum(r["want"] for r in reps)
                fan.append({"to_last_ms": (last - sent["send_ns"]) / 1e6, "got": got, "want": want})
                ms = fan[-1]["to_last_ms"]
                log(f"fan-out {k}: {got:,}/{want:,} members, the last after {ms:.0f} ms")
                time.sleep(1.0)
            result["fanout"] = fan
            result["fanout_to_last_ms"] = sorted(f["to_last_ms"] for f in fan)[len(fan) // 2]

            gen_list[0].send(f"talkers {TALKERS}")
            result["talkers_join"] = gen_list[0].expect("talkers", 120)
            time.sleep(1.0)
            stats0 = []
            for g in gen_list:
                g.send("stats")
                stats0.append(g.expect("stats", 10))
            gen_list[0].send(f"talk {talk_seconds:g} {TALK_RATE:g}")
            talk = gen_list[0].expect("talk", talk_seconds + 60)
            stats1 = []
            for g in gen_list:
                g.send("stats")
                stats1.append(g.expect("stats", 10))
            talk["pings_answered"] = sum(s["pings"] for s in stats1) - sum(
                s["pings"] for s in stats0
            )
            talk["dropped"] = sum(s["dropped"] for s in stats1)
            drops = [s for s in stats1 if s.get("first_drop")]
            if drops:
                first = min(drops, key=lambda s: s["first_drop_s"])
                talk["first_drop"] = first["first_drop"]
                talk["first_drop_s"] = first["first_drop_s"]  # since its generator started
                why, when = first["first_drop"], first["first_drop_s"]
                log(f"first connection dropped {when:.0f} s after its generator started: {why}")
            result["talk"] = talk
            result["after_talk"] = snapshot(server.pid, gen_pids)
            worst = ", ".join(f"{v:.0f}" for v in talk.get("max_ms_by_second", []))
            log(f"talk: worst latency (ms) by second of the talk: {worst}")
            log(
                f"talk: p50 {talk['p50_ms']:.2f} ms, p99 {talk['p99_ms']:.2f} ms, max "
                f"{talk['max_ms']:.1f} ms, {talk['received']:,}/{talk['expected']:,} delivered, "
                f"{talk['pings_answered']:,} pings answered meanwhile, {talk['dropped']} dropped"
            )
        finally:
            for g in gen_list:
                g.stop()
    result["load_after"] = os.getloadavg()[0]
    path = out_dir / f"scale-{n}.json"
    path.write_text(json.dumps(result, indent=1))
    log(f"written {path}")
    return result


def chart(out_dir: Path) -> Path:
    """results/scale.png: memory per connection and timings for every N run so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(
        (json.loads(p.read_text()) for p in out_dir.glob("scale-*.json")), key=lambda r: r["n"]
    )
    if not runs:
        raise SystemExit(f"no scale-*.json in {out_dir}")
    ns = [r["n"] for r in runs]
    labels = [
        f"{n / 1000:g}k" + (f"\n{r['server_processes']} proc" if r["server_processes"] > 1 else "")
        for n, r in zip(ns, runs, strict=True)
    ]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = range(len(runs))
    w = 0.27
    a.bar([i - w for i in x], [r["server_kb_per_conn"] for r in runs], w, label="epws-chat RSS")
    a.bar(x, [r["slab_kb_per_conn"] for r in runs], w, label="kernel slab (both ends)")
    a.bar([i + w for i in x], [r["gen_kb_per_conn"] for r in runs], w, label="Go generator RSS")
    a.set_xticks(list(x), labels)
    a.set_ylabel("KB per connection")
    a.set_title("memory per idle connection", fontsize=10)
    a.legend(fontsize=8)
    a.grid(axis="y", alpha=0.3)
    b.bar([i - w for i in x], [r["connect_s"] for r in runs], w, label="connect all (s)")
    b.bar(x, [r["fanout_to_last_ms"] / 1000 for r in runs], w, label="one message to all (s)")
    b.bar(
        [i + w for i in x],
        [r["talk"]["p99_ms"] / 1000 for r in runs],
        w,
        label="room of 1,000: p99 (s)",
    )
    b.set_xticks(list(x), labels)
    b.set_yscale("log")
    b.set_ylabel("seconds (log)")
    b.set_title("timings (noisy: a shared 2-core machine)", fontsize=10)
    b.legend(fontsize=8)
    b.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out_dir / "scale.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    p = argparse.ArgumentParser(prog="benchmarks/scale.py", description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=10_000, help="idle connections (default 10,000)")
    p.add_argument(
        "--workers",
        default="1",
        help="epws-chat processes: 1 (default; memory broker) or auto/K (Redis broker), "
        "needed when N exceeds what one process may hold",
    )
    p.add_argument(
        "--ping-period",
        type=float,
        default=PING_PERIOD,
        help="epws-chat's --ping-period (pong wait 3 times it); default 10 s, so that "
        "every client is pinged during the talk",
    )
    p.add_argument(
        "--talk-seconds", type=float, default=TALK_SECONDS, help="length of the talk (20 s)"
    )
    p.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    p.add_argument("--chart", action="store_true", help="draw results/scale.png and exit")
    a = p.parse_args()
    # SIGTERM unwinds like an error, so the server and generators are stopped by their
    # context managers (the generators would stop on their stdin closing anyway).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.chart:
        print(chart(a.out))
        return 0
    result = run(a.n, a.workers, a.out, a.ping_period, a.talk_seconds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
