"""Runs the benchmark suite: starts each server, drives it with the Go load generator,
stops it, and writes benchmarks/results/results.md and the charts.

Started by ``bash benchmarks/run`` (which builds the environment first); see
docs/performance.md for what each scenario measures and how to read the table.

Why this shape: the machine has two cores, so the server is pinned to one and the
generator to the other, and both sides' CPU use over the measured window is reported,
so a reader can tell which side limited a figure. Runs are interleaved (every server
once, then every server again) so that noise from other work on the machine spreads
over all servers instead of hitting one, and medians are taken over the repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
SERVERS_DIR = HERE / "servers"
LOADGEN = HERE / ".build" / "loadgen"
GOCHAT = HERE / ".build" / "gochat"  # the Go reference server (servers/gochat)
SERVER_CPU = "0"  # taskset core of the server
GEN_CPU = "1"  # taskset core of the load generator

LIBRARIES = (
    "epws",
    "epws-async",
    "epws-redis2",
    "epws-nometrics",
    "websockets",
    "aiohttp",
    "picows",
    "rawtcp",
    "gorilla",
)
#: Servers that only take part in some kinds of scenario: epws-async is epws's echo
#: written with a task per connection (the README's quick start), for comparison with
#: the callback style that the epws row uses; the chat is epws-chat either way.
#: epws-nometrics is epws-chat with --metrics off: next to the epws row (its "epws ÷
#: this" is metrics on ÷ off), run in turn with it in every repeat, what counting costs.
ONLY_KINDS = {
    "epws-async": ("echo",),
    "epws-redis2": ("chat",),
    "epws-nometrics": ("chat",),
    "rawtcp": ("echo",),
}
#: Servers that only take part in scenarios of some generator modes: rawtcp
#: (servers/rawtcp_server.py, an asyncio Protocol that writes back what it reads) is
#: not WebSocket, so it has the echo rows only, as the ceiling they are compared
#: with: the generator's -mode tcpecho sends the same messages with the same window.
ONLY_MODES = {"rawtcp": ("echo",)}
#: The generator's mode for a server that speaks something other than WebSocket.
RAW_MODES = {"rawtcp": {"echo": "tcpecho"}}
#: epws-redis2 is `epws-chat --workers 2 --broker redis://...` with its own redis-server:
#: several processes, so it is given every core (the generator's too) and its CPU and
#: idle memory are not measured (the generator watches one pid, the supervisor's).
MULTI_PROCESS = {"epws-redis2": "0,1"}
LOOPS = ("asyncio", "uvloop")
DASH = "\u2013"  # an empty table cell
TIMES = "\u00d7"  # the sign after a ratio
CHAT_RATE = 100_000  # offered deliveries/s in the fixed-rate chat scenarios


@dataclass(frozen=True)
class Scenario:
    """One measurement: which server kind it needs, the generator's arguments, what to report."""

    name: str
    kind: str  # "echo" or "chat": which server program is started
    mode: str  # the generator's -mode
    args: tuple[str, ...]
    metric: str  # key of the headline figure in the generator's output
    unit: str
    title: str
    higher_is_better: bool = True


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "echo-64B-1c",
            "echo",
            "echo",
            ("-conns", "1", "-size", "64", "-inflight", "16"),
            "msgs_per_s",
            "msgs/s",
            "echo 64 B, 1 connection",
        ),
        Scenario(
            "echo-64B-64c",
            "echo",
            "echo",
            ("-conns", "64", "-size", "64", "-inflight", "16"),
            "msgs_per_s",
            "msgs/s",
            "echo 64 B, 64 connections",
        ),
        Scenario(
            "echo-16K-1c",
            "echo",
            "echo",
            ("-conns", "1", "-size", "16384", "-inflight", "16"),
            "msgs_per_s",
            "msgs/s",
            "echo 16 KiB, 1 connection",
        ),
        Scenario(
            "echo-16K-64c",
            "echo",
            "echo",
            ("-conns", "64", "-size", "16384", "-inflight", "16"),
            "msgs_per_s",
            "msgs/s",
            "echo 16 KiB, 64 connections",
        ),
        Scenario(
            "chat-100-flat",
            "chat",
            "chat",
            ("-receivers", "100", "-senders", "4", "-rate", "0"),
            "lines_per_s",
            "lines/s",
            "chat, 100 receivers, flat out",
        ),
        Scenario(
            "chat-1000-flat",
            "chat",
            "chat",
            ("-receivers", "1000", "-senders", "4", "-rate", "0"),
            "lines_per_s",
            "lines/s",
            "chat, 1,000 receivers, flat out",
        ),
        Scenario(
            "chat-100-rate",
            "chat",
            "chat",
            ("-receivers", "100", "-senders", "4", "-rate", str(CHAT_RATE)),
            "p99_ms",
            "ms p99",
            f"chat, 100 receivers, {CHAT_RATE:,} deliveries/s offered",
            higher_is_better=False,
        ),
        Scenario(
            "chat-1000-rate",
            "chat",
            "chat",
            ("-receivers", "1000", "-senders", "4", "-rate", str(CHAT_RATE)),
            "p99_ms",
            "ms p99",
            f"chat, 1,000 receivers, {CHAT_RATE:,} deliveries/s offered",
            higher_is_better=False,
        ),
        Scenario(
            "idle",
            "chat",
            "idle",
            (),
            "kb_per_conn",
            "KB/conn",
            "idle connections held open (chat server)",
            higher_is_better=False,
        ),
        Scenario(
            "connect",
            "echo",
            "connect",
            ("-workers", "16"),
            "handshakes_per_s",
            "handshakes/s",
            "connection setup (16 concurrent)",
        ),
    )
}
QUICK_SCENARIOS = ("echo-64B-64c", "chat-1000-flat", "chat-1000-rate", "idle", "connect")


@dataclass(frozen=True)
class ServerConfig:
    library: str
    loop: str

    @property
    def label(self) -> str:
        if self.library == "gorilla":
            return "gorilla (Go)"
        if self.library == "rawtcp":
            return "raw TCP" if self.loop == "asyncio" else "raw TCP+uvloop"
        return self.library if self.loop == "asyncio" else f"{self.library}+uvloop"

    @property
    def epws_twin(self) -> str:
        """The epws configuration this one is compared with: same loop (Go: uvloop)."""
        return "epws" if self.loop == "asyncio" else "epws+uvloop"


@dataclass
class Options:
    servers: list[ServerConfig]
    scenarios: list[Scenario]
    repeats: int
    warmup: float
    duration: float
    idle_conns: int
    chat_window: int
    quiet_wait: float  # seconds in all the run may spend waiting for other work to stop
    out: Path
    quick: bool


@dataclass
class Record:
    server: str
    scenario: str
    repeat: int
    data: dict[str, Any] = field(default_factory=dict)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


#: The variable that turns the chat's metrics off (epws_chat.options.METRICS_ENV).
CHAT_METRICS_ENV = "EPWS_CHAT_METRICS"


def epws_chat_command() -> list[str]:
    """The real epws-chat from the benchmark venv (benchmarks/run installs the project).

    Its abuse controls are off: the generator floods from one address on purpose, and
    with the per-connection rate limit and the connection caps on, the rows would
    measure the limiter (the peers' servers have none).
    """
    return [
        str(Path(sys.executable).parent / "epws-chat"),
        "--rate",
        "0",
        "--max-connections",
        "0",
        "--max-connections-per-address",
        "0",
    ]


def server_command(
    opts: Options, cfg: ServerConfig, kind: str, port: int
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if cfg.library == "epws-redis2":
        cmd = [
            *epws_chat_command(),
            "--addr",
            f"127.0.0.1:{port}",
            "--loop",
            cfg.loop,
            "--log-level",
            "WARNING",
            "--shutdown-timeout",
            "1",
            "--workers",
            "2",
            "--broker",
            env["EPWS_BENCH_REDIS"],
        ]
        return cmd, env
    if cfg.library in ("epws", "epws-nometrics") and kind == "chat":
        # The real chat server, with its defaults (the seed's constants); logging of
        # every connection is turned down because the peers' servers log nothing.
        cmd = [
            *epws_chat_command(),
            "--addr",
            f"127.0.0.1:{port}",
            "--loop",
            cfg.loop,
            "--log-level",
            "WARNING",
            "--shutdown-timeout",
            "1",
        ]
        if cfg.library == "epws-nometrics":
            cmd += ["--metrics", "off"]
        return cmd, env
    if cfg.library == "gorilla":
        return [str(GOCHAT), "-kind", kind, "-addr", f"127.0.0.1:{port}"], env
    cmd = [
        sys.executable,
        str(SERVERS_DIR / f"{cfg.library.partition('-')[0]}_server.py"),
        "--kind",
        kind,
        "--port",
        str(port),
    ]
    if cfg.library == "epws-async":
        cmd += ["--handler", "async"]
    if cfg.loop == "uvloop":
        cmd.append("--uvloop")
    return cmd, env


@contextlib.contextmanager
def running_server(
    opts: Options, cfg: ServerConfig, kind: str, logfile: IO[bytes]
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Start a server pinned to its core, wait until it accepts, stop it afterwards."""
    with contextlib.ExitStack() as stack:
        if cfg.library in MULTI_PROCESS:
            os.environ["EPWS_BENCH_REDIS"] = stack.enter_context(redis_server(logfile))
        yield stack.enter_context(_running_server(opts, cfg, kind, logfile))


@contextlib.contextmanager
def redis_server(logfile: IO[bytes]) -> Iterator[str]:
    """A redis-server of its own (no persistence) for epws-redis2; its URL."""
    import tempfile

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
                ):
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(5)


@contextlib.contextmanager
def _running_server(
    opts: Options, cfg: ServerConfig, kind: str, logfile: IO[bytes]
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    cmd, env = server_command(opts, cfg, kind, port)
    logfile.write(f"\n=== {cfg.label} {kind}: {' '.join(cmd)}\n".encode())
    logfile.flush()
    proc = subprocess.Popen(
        ["taskset", "-c", MULTI_PROCESS.get(cfg.library, SERVER_CPU), *cmd],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=SERVERS_DIR,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cfg.label} {kind} server exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{cfg.label} {kind} server did not listen in 20 s"
                    ) from None
                time.sleep(0.05)
        time.sleep(0.2)  # let the probe connection's teardown finish
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# ---- the generator


def gen_command(
    opts: Options, sc: Scenario, port: int, pid: int, library: str = "epws"
) -> list[str]:
    raw = RAW_MODES.get(library, {}).get(sc.mode)
    cmd = [
        "taskset",
        "-c",
        GEN_CPU,
        str(LOADGEN),
        "-mode",
        raw or sc.mode,
        "-url",
        f"tcp://127.0.0.1:{port}" if raw else f"ws://127.0.0.1:{port}/ws",
        "-serverpid",
        str(pid),
        "-warmup",
        str(opts.warmup),
        "-duration",
        str(opts.duration),
        "-deadline",
        "120",
        *sc.args,
    ]
    if sc.mode == "chat":
        cmd += ["-window", str(opts.chat_window), "-drain", "1"]
    if sc.mode == "idle":
        cmd += ["-conns", str(opts.idle_conns), "-hold", "60"]
    return cmd


def parse_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError(f"generator printed no result: {text[-500:]!r}")


def run_load(
    opts: Options, sc: Scenario, proc: subprocess.Popen[bytes], port: int, library: str = "epws"
) -> dict[str, Any]:
    cmd = gen_command(opts, sc, port, proc.pid, library)
    if sc.mode == "idle":
        return run_idle(cmd, proc)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=150, check=False)
    data = parse_json_line(done.stdout)
    if proc.poll() is not None:
        data["error"] = f"server died (exit {proc.returncode})"
    return data


def run_idle(cmd: list[str], server: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Open many connections, read the server's RSS while they are held, release them."""
    time.sleep(0.5)
    before = rss_kb(server.pid)
    gen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert gen.stdin is not None and gen.stdout is not None
    try:
        ready = json.loads(gen.stdout.readline() or "{}")
        if ready.get("phase") != "ready":
            return {"error": f"idle generator: {ready}"}
        time.sleep(1.0)  # handshakes and their tasks settle
        after = rss_kb(server.pid)
        gen.stdin.write("\n")
        gen.stdin.flush()
        final = parse_json_line(gen.stdout.read())
    finally:
        try:
            gen.wait(30)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()
    open_ = int(ready.get("open", 0))
    data: dict[str, Any] = {
        "open": open_,
        "failed": ready.get("failed", 0),
        "setup_s": ready.get("setup_s", 0.0),
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "kb_per_conn": (after - before) / open_ * 1024 / 1000 if open_ else 0.0,
        "dropped_while_held": final.get("dropped_while_held", 0),
    }
    if ready.get("dial_error"):
        data["error"] = ready["dial_error"]
    return data


# ---- the run


def core_busy() -> dict[str, int]:
    """Busy (not idle) clock ticks per core, everyone's work included."""
    out: dict[str, int] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        f = line.split()
        if f and f[0].startswith("cpu") and f[0] != "cpu":
            ticks = [int(x) for x in f[1:]]
            out[f[0]] = sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
    return out


class QuietWaiter:
    """Before each server starts, wait while other work keeps a core busy.

    The machine is shared (tests of other engineers, CI): a figure taken while
    another process holds half a core says little. The wait is bounded per server
    and over the whole run, so a busy machine makes the run noisier, never endless.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def wait(self) -> None:
        give_up = time.monotonic() + min(self.budget, 20.0)
        while self.budget > 0:
            t0, b0 = time.monotonic(), core_busy()
            time.sleep(0.25)
            b1 = core_busy()
            dt = time.monotonic() - t0
            busiest = max((b1[c] - b0.get(c, b1[c])) / dt for c in b1) if b1 else 0.0
            self.budget -= dt
            if busiest < 25 or time.monotonic() > give_up:
                return


def run_all(opts: Options) -> list[Record]:
    records: list[Record] = []
    logs = opts.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, list[Scenario]] = {}
    for sc in opts.scenarios:
        if sc.mode != "idle":
            kinds.setdefault(sc.kind, []).append(sc)
    idle = [sc for sc in opts.scenarios if sc.mode == "idle"]
    quiet = QuietWaiter(opts.quiet_wait)
    for rep in range(opts.repeats):
        for cfg in opts.servers:
            with (logs / f"{cfg.label}.log").open("ab") as logfile:
                for kind, scenarios in kinds.items():
                    if kind not in ONLY_KINDS.get(cfg.library, (kind,)):
                        continue
                    modes = ONLY_MODES.get(cfg.library)
                    mine = [sc for sc in scenarios if modes is None or sc.mode in modes]
                    if not mine:
                        continue
                    quiet.wait()
                    records += run_group(opts, cfg, kind, mine, rep, logfile)
                # Memory is measured on a fresh server (earlier runs would leave freed
                # memory in its allocator) and once: it hardly varies between repeats.
                if (
                    idle
                    and rep == 0
                    and "chat" in ONLY_KINDS.get(cfg.library, ("chat",))
                    and cfg.library not in MULTI_PROCESS
                ):
                    quiet.wait()
                    records += run_group(opts, cfg, "chat", idle, rep, logfile)
    return records


def run_group(
    opts: Options,
    cfg: ServerConfig,
    kind: str,
    scenarios: Sequence[Scenario],
    rep: int,
    logfile: IO[bytes],
) -> list[Record]:
    out: list[Record] = []
    try:
        with running_server(opts, cfg, kind, logfile) as (proc, port):
            for sc in scenarios:
                if proc.poll() is not None:
                    out.append(Record(cfg.label, sc.name, rep, {"error": "server died"}))
                    continue
                try:
                    data = run_load(opts, sc, proc, port, cfg.library)
                    if cfg.library in MULTI_PROCESS:
                        data.pop("server_cpu", None)  # the supervisor's, not the workers'
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    data = {"error": str(exc)}
                out.append(Record(cfg.label, sc.name, rep, data))
                log(f"rep {rep + 1} {cfg.label:18} {sc.name:15} {summarize(sc, data)}")
                time.sleep(0.3)
    except RuntimeError as exc:
        log(f"rep {rep + 1} {cfg.label}: {exc}")
        out += [Record(cfg.label, sc.name, rep, {"error": str(exc)}) for sc in scenarios]
    return out


def summarize(sc: Scenario, data: dict[str, Any]) -> str:
    if "error" in data:
        return f"ERROR {data['error']}"
    parts = [f"{fmt(data.get(sc.metric))} {sc.unit}"]
    if sc.mode in ("echo", "chat", "connect"):
        parts.append(f"p50 {fmt(data.get('p50_ms'))} ms p99 {fmt(data.get('p99_ms'))} ms")
    if sc.mode == "chat":
        parts.append(f"lost {data.get('lost')} evicted {data.get('evicted')}")
    if "gen_cpu" in data:
        parts.append(f"cpu srv {data.get('server_cpu', 0):.0f}% gen {data['gen_cpu']:.0f}%")
    return ", ".join(parts)


# ---- aggregation and the report


def fmt(v: Any) -> str:
    if v is None:
        return DASH
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v >= 1000:
            return f"{v:,.0f}"
        if v >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def compact(v: float) -> str:
    """A bar label short enough for eight bars side by side: 1.29M, 780k, 63.2."""
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    return fmt(v)


def count(v: Any) -> str:
    """A count (a median of counts may be x.5): shown as a whole number."""
    return f"{round(v):,}" if isinstance(v, int | float) else DASH


def medians(records: list[Record]) -> dict[tuple[str, str], dict[str, Any]]:
    """Median of every numeric field over the repeats that did not fail."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, str], list[str]] = {}
    for r in records:
        key = (r.server, r.scenario)
        if "error" in r.data:
            errors.setdefault(key, []).append(str(r.data["error"]))
        else:
            groups.setdefault(key, []).append(r.data)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key in set(groups) | set(errors):
        runs = groups.get(key, [])
        agg: dict[str, Any] = {"runs": len(runs), "errors": errors.get(key, [])}
        numeric = {k for d in runs for k, v in d.items() if isinstance(v, int | float)}
        for k in numeric:
            vals = [float(d[k]) for d in runs if isinstance(d.get(k), int | float)]
            agg[k] = statistics.median(vals)
            agg[k + "_min"] = min(vals)
            agg[k + "_max"] = max(vals)
        out[key] = agg
    return out


def limited_by(d: dict[str, Any]) -> str:
    """Which side was (nearly) saturated: the reader's first question about a figure.

    When neither was, but other work on this shared machine took a good part of a
    core (its busy time less ours), the figure is marked as contended instead.
    """
    gen, srv = d.get("gen_cpu"), d.get("server_cpu")
    if gen is None or srv is None:
        return DASH
    sides = [name for name, v in (("server", srv), ("generator", gen)) if v >= 85]
    if sides:
        return " + ".join(sides)
    others = (
        max(0.0, d.get(f"cpu{SERVER_CPU}_busy", srv) - srv),
        max(0.0, d.get(f"cpu{GEN_CPU}_busy", gen) - gen),
    )
    if max(others) >= 15:
        return f"contended (others {others[0]:.0f} % / {others[1]:.0f} %)"
    return "neither (latency-bound)"


def ratio(epws: Any, other: Any, higher_is_better: bool) -> str:
    """epws ÷ peer for throughputs; peer ÷ epws for costs, so > 1 always means epws is better."""
    if not isinstance(epws, int | float) or not isinstance(other, int | float):
        return DASH
    if epws <= 0 or other <= 0:
        return DASH
    r = epws / other if higher_is_better else other / epws
    return f"{r:.2f}{TIMES}"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("epws", "websockets", "aiohttp", "picows", "uvloop"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        out["go"] = subprocess.run(
            ["go", "version"], capture_output=True, text=True, check=False
        ).stdout.split()[2]
    except (OSError, IndexError):
        out["go"] = "?"
    out["gorilla/websocket"] = debian_version("golang-github-gorilla-websocket-dev")
    return out


def debian_version(pkg: str) -> str:
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() or "?"
    except OSError:
        return "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def write_report(opts: Options, records: list[Record], meta: dict[str, Any]) -> Path:
    agg = medians(records)
    labels = [c.label for c in opts.servers]
    lines: list[str] = []
    add = lines.append
    add("# Benchmark results")
    add("")
    add(
        f"Run {meta['date']} on {meta['cpu']} ({os.cpu_count()} cores), "
        f"server pinned to core {SERVER_CPU}, "
        f"load generator (Go, gorilla/websocket) to core {GEN_CPU}. "
        f"{opts.repeats} repeat(s), {opts.duration:g} s measured after {opts.warmup:g} s warm-up; "
        "figures are medians over the repeats. "
        f"Load average {meta['load_before']} before and {meta['load_after']} after the run: "
        "the machine is shared, so expect noise of 10-20 % between runs."
        + (" **Quick run** (fewer repeats, shorter, a subset)." if opts.quick else "")
    )
    add("")
    add("Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".")
    add("")
    if any(c.library == "epws" for c in opts.servers) and any(
        s.kind == "chat" for s in opts.scenarios
    ):
        add(
            "epws's chat figures are the real `epws-chat` "
            "(seed rules: evicts a client 256 messages (x 512 bytes) behind), "
            f"metrics {meta['chat_metrics']} (${CHAT_METRICS_ENV})."
        )
        add(
            "The Python peers' chat servers are the simple fan-out their docs show: they buffer "
            "without bound and evict no one, so under saturation their latency grows instead of "
            "anyone being dropped. `gorilla (Go)` is a reference, not a peer: the seed's design "
            "(hub, pumps, 256-message queue with eviction, coalescing) written for this folder in "
            "Go with Debian's gorilla/websocket, on one core like the others."
        )
        add("")

    add("## Summary (medians)")
    add("")
    add("| scenario | unit | " + " | ".join(labels) + " |")
    add("|---|---|" + "---:|" * len(labels))
    for sc in opts.scenarios:
        cells = [fmt(agg.get((lab, sc.name), {}).get(sc.metric)) for lab in labels]
        add(f"| {sc.title} | {sc.unit} | " + " | ".join(cells) + " |")
    add("")

    peers = [c for c in opts.servers if c.library != "epws"]
    if any(c.library == "epws" for c in opts.servers) and peers:
        add("## epws ÷ peer, same event loop (> 1 means epws is better)")
        add("")
        add("| scenario | " + " | ".join(c.label for c in peers) + " |")
        add("|---|" + "---:|" * len(peers))
        for sc in opts.scenarios:
            cells = []
            for c in peers:
                e = agg.get((c.epws_twin, sc.name), {})
                p = agg.get((c.label, sc.name), {})
                cells.append(ratio(e.get(sc.metric), p.get(sc.metric), sc.higher_is_better))
            add(f"| {sc.title} | " + " | ".join(cells) + " |")
        add("")
        add(
            "Throughputs are epws ÷ peer; latencies and memory are peer ÷ epws. "
            "gorilla (Go) is compared with epws+uvloop."
        )
        add("")

    raws = {c.loop: c.label for c in opts.servers if c.library == "rawtcp"}
    echo_scs = [sc for sc in opts.scenarios if sc.mode == "echo"]
    if raws and echo_scs:
        ws = [c for c in opts.servers if c.library != "rawtcp"]
        add("## Echo as a share of raw TCP (same loop, same run)")
        add("")
        add(
            "Each WebSocket echo figure as a percentage of the raw TCP echo of the same "
            "message size, window and event loop (the Go reference against raw TCP+uvloop): "
            "what framing, masking, parsing and the library's own work cost."
        )
        add("")
        add("| scenario | " + " | ".join(c.label for c in ws) + " |")
        add("|---|" + "---:|" * len(ws))
        for sc in echo_scs:
            cells = []
            for c in ws:
                raw_label = raws.get("uvloop" if c.loop == "go" else c.loop)
                v = agg.get((c.label, sc.name), {}).get(sc.metric)
                r = agg.get((raw_label, sc.name), {}).get(sc.metric) if raw_label else None
                if isinstance(v, int | float) and isinstance(r, int | float) and r > 0:
                    cells.append(f"{100 * v / r:.0f} %")
                else:
                    cells.append(DASH)
            add(f"| {sc.title} | " + " | ".join(cells) + " |")
        add("")

    add("## Details")
    for sc in opts.scenarios:
        add("")
        add(f"### {sc.title} (`{sc.name}`)")
        add("")
        if sc.mode == "idle":
            add(
                f"{opts.idle_conns:,} connections opened and held; server RSS before and after "
                "(measured once, on a fresh server)."
            )
            add("")
            add(
                "| server | KB/conn | RSS before MB | RSS after MB | open | setup s | epws ÷ this |"
            )
            add("|---|---:|---:|---:|---:|---:|---:|")
        elif sc.mode == "chat":
            add(
                "| server | lines/s | p50 ms | p99 ms | sent | lost | evicted | server CPU % "
                "| gen CPU % | limited by | epws ÷ this |"
            )
            add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        else:
            add(
                f"| server | {sc.unit} | p50 ms | p99 ms | server CPU % | gen CPU % | limited by "
                "| epws ÷ this |"
            )
            add("|---|---:|---:|---:|---:|---:|---|---:|")
        for c in opts.servers:
            d = agg.get((c.label, sc.name), {})
            e = agg.get((c.epws_twin, sc.name), {})
            r = ratio(e.get(sc.metric), d.get(sc.metric), sc.higher_is_better)
            if c.library == "epws":
                r = DASH
            name = c.label
            if d.get("errors"):
                name += f" ({len(d['errors'])} failed: {d['errors'][0][:80]})"
            if sc.mode == "idle":
                add(
                    f"| {name} | {fmt(d.get('kb_per_conn'))} | {fmt(d.get('rss_before_mb'))} | "
                    f"{fmt(d.get('rss_after_mb'))} | {count(d.get('open'))} | "
                    f"{fmt(d.get('setup_s'))} | {r} |"
                )
            elif sc.mode == "chat":
                add(
                    f"| {name} | {fmt(d.get('lines_per_s'))} | {fmt(d.get('p50_ms'))} | "
                    f"{fmt(d.get('p99_ms'))} | {count(d.get('sent'))} | {count(d.get('lost'))} | "
                    f"{count(d.get('evicted'))} | {fmt(d.get('server_cpu'))} | "
                    f"{fmt(d.get('gen_cpu'))} | {limited_by(d)} | {r} |"
                )
            else:
                add(
                    f"| {name} | {fmt(d.get(sc.metric))} | {fmt(d.get('p50_ms'))} | "
                    f"{fmt(d.get('p99_ms'))} | {fmt(d.get('server_cpu'))} | "
                    f"{fmt(d.get('gen_cpu'))} | {limited_by(d)} | {r} |"
                )
    add("")
    add("CPU % is of one core over the measured window (utime + stime from /proc/PID/stat); ")
    add(
        "'limited by' names a side at 85 % or more; 'contended' means neither was, but other work "
        f"on this shared machine used that much of core {SERVER_CPU} / core {GEN_CPU} (the core's "
        "busy time from /proc/stat less ours). Raw runs: `raw.json`; server logs: `logs/`."
    )
    add("")
    charts = draw_charts(opts, agg)
    if charts:
        add("## Charts")
        add("")
        for png in charts:
            add(f"![{png.stem}]({png.name})")
            add("")
    path = opts.out / "results.md"
    path.write_text("\n".join(lines))
    return path


def draw_charts(opts: Options, agg: dict[tuple[str, str], dict[str, Any]]) -> list[Path]:
    """One PNG per scenario family: bars per server, whiskers from slowest to fastest repeat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = {
        "echo": [s for s in opts.scenarios if s.mode == "echo"],
        "chat": [s for s in opts.scenarios if s.mode == "chat"],
        "connections": [s for s in opts.scenarios if s.mode in ("idle", "connect")],
    }
    for family in families:
        # Charts of an earlier run with other scenarios must not linger; scale.png is
        # benchmarks/scale.py's, not this run's.
        (opts.out / f"{family}.png").unlink(missing_ok=True)
    colors = {
        "epws": "#d62728",
        "websockets": "#1f77b4",
        "aiohttp": "#2ca02c",
        "picows": "#9467bd",
        "gorilla": "#7f7f7f",
        "rawtcp": "#bcbd22",
    }
    written: list[Path] = []
    for family, scs in families.items():
        if not scs:
            continue
        cols = min(2, len(scs))
        rows = (len(scs) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.6 * rows), squeeze=False)
        for ax, sc in zip(axes.flat, scs, strict=False):
            labels, vals, lo, hi, cs, hatches = [], [], [], [], [], []
            for c in opts.servers:
                d = agg.get((c.label, sc.name), {})
                v = d.get(sc.metric)
                if not isinstance(v, int | float):
                    continue
                labels.append(c.label.replace("+uvloop", "\n+uvloop"))
                vals.append(v)
                lo.append(v - d.get(sc.metric + "_min", v))
                hi.append(d.get(sc.metric + "_max", v) - v)
                cs.append(colors.get(c.library, "gray"))
                hatches.append("//" if c.loop == "uvloop" else "")
            bars = ax.bar(range(len(vals)), vals, color=cs, yerr=[lo, hi], capsize=3)
            for b, h in zip(bars, hatches, strict=True):
                b.set_hatch(h)
            for i, v in enumerate(vals):
                ax.text(i, v, compact(v), ha="center", va="bottom", fontsize=7)
            ax.set_xticks(range(len(vals)), labels, fontsize=7)
            better = "higher is better" if sc.higher_is_better else "lower is better"
            ax.set_title(f"{sc.title}\n{sc.unit}, {better}; hatched: uvloop", fontsize=9)
            ax.tick_params(axis="y", labelsize=7)
            ax.grid(axis="y", alpha=0.3)
        for ax in list(axes.flat)[len(scs) :]:
            ax.set_visible(False)
        fig.tight_layout()
        path = opts.out / f"{family}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ---- command line


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="benchmarks/run",
        description="Benchmark epws against websockets, aiohttp and picows "
        "(see docs/performance.md).",
    )
    p.add_argument(
        "--quick", action="store_true", help="1 repeat, short runs, a subset of scenarios"
    )
    p.add_argument("--servers", help=f"comma-separated libraries (default: {','.join(LIBRARIES)})")
    p.add_argument("--loops", help="comma-separated event loops: asyncio,uvloop (default: both)")
    p.add_argument("--scenarios", help="comma-separated scenario names (see --list)")
    p.add_argument("--repeats", type=int, help="repeats per measurement (default 3, quick 1)")
    p.add_argument(
        "--duration", type=float, help="seconds measured per run (default 1.5; quick 0.5)"
    )
    p.add_argument(
        "--warmup", type=float, help="seconds of load before measuring (default 0.5, quick 0.2)"
    )
    p.add_argument(
        "--idle-conns",
        type=int,
        help="connections in the idle scenario (default 10000, quick 2000)",
    )
    p.add_argument(
        "--chat-window", type=int, default=32, help="chat flat out: lines in flight per sender"
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="seconds in all to wait for other work on the machine to pause (0: never)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    a = p.parse_args(argv)
    if a.list:
        for sc in SCENARIOS.values():
            print(f"{sc.name:16} {sc.title}")
        sys.exit(0)
    libs = a.servers.split(",") if a.servers else list(LIBRARIES)
    loops = a.loops.split(",") if a.loops else list(LOOPS)
    for lib in libs:
        if lib not in LIBRARIES:
            p.error(f"unknown server {lib!r}; choose from {', '.join(LIBRARIES)}")
    for lp in loops:
        if lp not in LOOPS:
            p.error(f"unknown loop {lp!r}; choose from {', '.join(LOOPS)}")
    default = QUICK_SCENARIOS if a.quick else tuple(SCENARIOS)
    names = a.scenarios.split(",") if a.scenarios else list(default)
    for n in names:
        if n not in SCENARIOS:
            p.error(f"unknown scenario {n!r}; see --list")
    servers = [ServerConfig(lib, lp) for lib in libs if lib != "gorilla" for lp in loops]
    if "gorilla" in libs:
        servers.append(ServerConfig("gorilla", "go"))  # one Go runtime, no loop choice
    return Options(
        servers=servers,
        scenarios=[SCENARIOS[n] for n in names],
        repeats=a.repeats or (1 if a.quick else 3),
        warmup=a.warmup if a.warmup is not None else (0.2 if a.quick else 0.5),
        duration=a.duration or (0.5 if a.quick else 1.5),
        idle_conns=a.idle_conns or (2000 if a.quick else 10_000),
        chat_window=a.chat_window,
        quiet_wait=a.quiet_wait,
        out=a.out,
        quick=a.quick,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    # SIGTERM unwinds like an error, so the servers and generators started so far are
    # stopped by their context managers instead of being left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not LOADGEN.exists():
        print(f"{LOADGEN} is missing: run `bash benchmarks/run`, which builds it", file=sys.stderr)
        return 1
    if shutil.which("taskset") is None:
        print(
            "taskset (util-linux) is needed to pin server and generator to cores", file=sys.stderr
        )
        return 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by both sides
    need = opts.idle_conns + 100
    if any(s.mode == "idle" for s in opts.scenarios) and hard < need:
        print(f"open-file limit {hard} < {need}: lower --idle-conns", file=sys.stderr)
        return 1
    opts.out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(),
        "versions": versions(),
        "load_before": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    # epws-chat inherits the environment: EPWS_CHAT_METRICS=off benchmarks/run ... measures
    # the chat without its counters (what metrics cost on the hot path).
    meta["chat_metrics"] = os.environ.get(CHAT_METRICS_ENV) or "on"
    log(
        f"{len(opts.servers)} servers x {len(opts.scenarios)} scenarios x {opts.repeats} repeats; "
        f"epws chat: epws-chat, metrics {meta['chat_metrics']}"
    )
    started = time.monotonic()
    records = run_all(opts)
    meta["load_after"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    meta["seconds"] = round(time.monotonic() - started)
    (opts.out / "raw.json").write_text(
        json.dumps({"meta": meta, "records": [r.__dict__ for r in records]}, indent=1)
    )
    path = write_report(opts, records, meta)
    log(f"done in {meta['seconds']} s: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
