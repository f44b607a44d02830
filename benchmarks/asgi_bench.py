"""ASGI rows: one Starlette app under uvicorn with each ``--ws`` implementation.

    bash benchmarks/run --asgi [--repeats 3] [--duration 2] [--loop uvloop] [--only ...]

(``benchmarks/run --asgi`` builds the generator and the environment, adds uvicorn,
httptools, wsproto and Starlette to it, and runs this file with its options.)

The same apps (servers/asgi_app.py), the same uvicorn (httptools, and one ``--loop`` for
every implementation: uvloop unless told), the same Go load generator as
benchmarks/bench.py, pinned as there
(server on core 0, generator on core 1); only ``--ws`` changes: epws
(``epws.asgi:WebSocketProtocol``), ``websockets-sansio`` (uvicorn's default),
``websockets`` (its legacy one) and ``wsproto``. Runs are interleaved (every
implementation once, then again) and medians are taken, so noise from other work on the
machine spreads over all of them, and every ratio in the table compares figures of
the same run. Writes benchmarks/results/asgi.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import (
    DASH,
    GEN_CPU,
    LOADGEN,
    SERVER_CPU,
    TIMES,
    cpu_model,
    free_port,
    parse_json_line,
    run_idle,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "asgi.md"

IMPLEMENTATIONS = {
    "epws": "epws.asgi:WebSocketProtocol",
    "websockets-sansio": "websockets-sansio",
    "websockets": "websockets",
    "wsproto": "wsproto",
}
DEFAULT = "websockets-sansio"  # what uvicorn's --ws auto picks when websockets is installed

# name, app, generator arguments, metric, unit, title, higher is better
SCENARIOS: list[tuple[str, str, list[str], str, str, str, bool]] = [
    ("echo-64B-1c", "echo", ["-mode", "echo", "-conns", "1", "-size", "64", "-inflight", "16"],
     "msgs_per_s", "msgs/s", "echo 64 B, 1 connection", True),
    ("echo-64B-64c", "echo", ["-mode", "echo", "-conns", "64", "-size", "64", "-inflight", "16"],
     "msgs_per_s", "msgs/s", "echo 64 B, 64 connections", True),
    ("echo-16K-1c", "echo", ["-mode", "echo", "-conns", "1", "-size", "16384", "-inflight", "16"],
     "msgs_per_s", "msgs/s", "echo 16 KiB, 1 connection", True),
    ("fanout-1000", "chat", ["-mode", "chat", "-receivers", "1000", "-senders", "4", "-rate", "0",
     "-window", "32", "-drain", "1"],
     "lines_per_s", "lines/s", "broadcast to 1,000 receivers, flat out", True),
    ("idle", "echo", ["-mode", "idle", "-hold", "60"],
     "kb_per_conn", "KB/conn", "memory per idle connection", False),
]  # fmt: skip


@contextlib.contextmanager
def uvicorn_server(
    ws: str, app: str, loop: str, log: Any
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    cmd = [
        "taskset", "-c", SERVER_CPU, sys.executable, "-m", "uvicorn", f"asgi_app:{app}",
        "--app-dir", str(HERE / "servers"), "--ws", ws, "--http", "httptools",
        "--loop", loop, "--lifespan", "off", "--no-access-log", "--log-level", "warning",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        import socket

        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn --ws {ws} exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn --ws {ws} did not listen") from None
                time.sleep(0.05)
        time.sleep(0.2)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def measure(args: argparse.Namespace, scenario: tuple[Any, ...], ws: str, log: Any) -> Any:
    name, app, gen_args, metric, *_ = scenario
    with uvicorn_server(ws, app, args.loop, log) as (proc, port):
        cmd = [
            "taskset", "-c", GEN_CPU, str(LOADGEN), *gen_args,
            "-url", f"ws://127.0.0.1:{port}/ws", "-serverpid", str(proc.pid),
            "-warmup", str(args.warmup), "-duration", str(args.duration), "-deadline", "120",
        ]  # fmt: skip
        if name == "idle":
            cmd += ["-conns", str(args.idle_conns)]
            data = run_idle(cmd, proc)
        else:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=150, check=False)
            data = parse_json_line(done.stdout)
    if data.get("error"):
        print(f"{name} --ws {ws}: {data['error']}", file=sys.stderr)
        return None
    value = data.get(metric)
    if value is None:
        return None
    if name != "idle":
        # Per second of the server's own CPU time: what a loaded machine changes least
        # (the wall-clock rate falls with the CPU share the server gets; this does not).
        cpu = float(data.get("server_cpu") or 0) / 100
        return (float(value), float(value) / cpu if cpu else None)
    return (float(value), None)


def versions() -> str:
    names = ("epws", "uvicorn", "starlette", "websockets", "wsproto", "httptools", "uvloop")
    out = [f"Python {platform.python_version()}"]
    for name in names:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} not installed")
    return ", ".join(out)


def ratio(epws: list[float] | None, other: list[float] | None, higher: bool) -> str:
    """epws ÷ other for rates, other ÷ epws for memory: > 1 always means epws is better."""
    if not epws or not other:
        return DASH
    e, o = statistics.median(epws), statistics.median(other)
    if e <= 0 or o <= 0:
        return DASH
    return f"{(e / o if higher else o / e):.2f}{TIMES}"


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run --asgi",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--idle-conns", type=int, default=2000)
    parser.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    parser.add_argument(
        "--only",
        nargs="*",
        help=f"scenario names (default: all): {' '.join(s[0] for s in SCENARIOS)}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"table (default {RESULTS})")
    args = parser.parse_args()
    if not LOADGEN.exists():
        print(f"build the generator first (bash benchmarks/run): {LOADGEN}", file=sys.stderr)
        return 2
    scenarios = [s for s in SCENARIOS if not args.only or s[0] in args.only]
    values: dict[tuple[str, str], list[float]] = {}
    per_cpu: dict[tuple[str, str], list[float]] = {}
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (HERE / ".build").mkdir(exist_ok=True)
    with open(HERE / ".build" / "asgi.log", "ab") as log:  # servers' output, not kept
        for round_ in range(args.repeats):
            for scenario in scenarios:
                for impl, ws in IMPLEMENTATIONS.items():
                    got = measure(args, scenario, ws, log)
                    print(f"round {round_ + 1} {scenario[0]} {impl}: {got}", flush=True)
                    if got is not None:
                        values.setdefault((scenario[0], impl), []).append(got[0])
                        if got[1] is not None:
                            per_cpu.setdefault((scenario[0], impl), []).append(got[1])
    load_after = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    only = f" --only {' '.join(args.only)}" if args.only else ""
    others = [impl for impl in IMPLEMENTATIONS if impl not in ("epws", DEFAULT)]
    lines = [
        "# ASGI: uvicorn with each --ws implementation",
        "",
        f"`bash benchmarks/run --asgi --repeats {args.repeats} --duration {args.duration:g} "
        f"--loop {args.loop}{only}`, {started}, on {cpu_model()} ({os.cpu_count()} cores), "
        f"server pinned to core {SERVER_CPU}, the Go generator to core {GEN_CPU}. "
        f"Load average {load_before} before and {load_after} after: the machine is shared, "
        "so compare the columns of one row (measured in the same interleaved rounds), not "
        "figures across runs. uvicorn with httptools and "
        f"{args.loop}, Starlette apps from `servers/asgi_app.py`, medians of "
        f"{args.repeats} round(s). The ratios are epws ÷ the other (the other ÷ epws for "
        "memory), so > 1 always means epws is better; the default is what uvicorn's "
        '`--ws auto` picks when websockets is installed. "per server CPU-second" divides '
        "the rate by the CPU time the uvicorn process used over the measured window.",
        "",
        f"Versions: {versions()}.",
        "",
        "| scenario | "
        + " | ".join(IMPLEMENTATIONS)
        + f" | epws vs {DEFAULT} (default) | "
        + " | ".join(f"epws vs {o}" for o in others)
        + " |",
        "| --- | "
        + " | ".join("---" for _ in IMPLEMENTATIONS)
        + " | --- |"
        + " --- |" * len(others),
    ]
    rows = [(s[0], s[5], s[4], s[6], values) for s in scenarios]
    rows += [(s[0], s[5], f"{s[4]} per server CPU-second", True, per_cpu) for s in scenarios]
    for name, title, unit, higher, table in rows:
        if not any((name, impl) in table for impl in IMPLEMENTATIONS):
            continue
        cells = []
        for impl in IMPLEMENTATIONS:
            got = table.get((name, impl))
            cells.append(f"{statistics.median(got):,.1f}" if got else DASH)
        epws = table.get((name, "epws"))
        ratios = [ratio(epws, table.get((name, o)), higher) for o in (DEFAULT, *others)]
        lines.append(f"| {title} ({unit}) | " + " | ".join(cells + ratios) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
