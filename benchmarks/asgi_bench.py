"""ASGI rows: one Starlette app under uvicorn with each ``--ws`` implementation.

    .venv/bin/python benchmarks/asgi_bench.py [--repeats 3] [--duration 2]

The same apps (servers/asgi_app.py), the same uvicorn (httptools, uvloop: its defaults
when installed), the same Go load generator as benchmarks/bench.py, pinned as there
(server on core 0, generator on core 1); only ``--ws`` changes: epws
(``epws.asgi:WebSocketProtocol``), ``websockets-sansio`` (uvicorn's default),
``websockets`` (its legacy one) and ``wsproto``. Runs are interleaved (every
implementation once, then again) and medians are taken, so noise from other work on the
machine spreads over all of them. Writes benchmarks/results/asgi.md.

The generator must be built (``bash benchmarks/run`` builds it into benchmarks/.build/).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import DASH, GEN_CPU, LOADGEN, SERVER_CPU, TIMES, free_port, parse_json_line, run_idle

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
def uvicorn_server(ws: str, app: str, log: Any) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    cmd = [
        "taskset", "-c", SERVER_CPU, sys.executable, "-m", "uvicorn", f"asgi_app:{app}",
        "--app-dir", str(HERE / "servers"), "--ws", ws, "--http", "httptools",
        "--loop", "uvloop", "--lifespan", "off", "--no-access-log", "--log-level", "warning",
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
    with uvicorn_server(ws, app, log) as (proc, port):
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--idle-conns", type=int, default=2000)
    parser.add_argument("--only", nargs="*", help="scenario names (default: all)")
    args = parser.parse_args()
    if not LOADGEN.exists():
        print(f"build the generator first (bash benchmarks/run): {LOADGEN}", file=sys.stderr)
        return 2
    scenarios = [s for s in SCENARIOS if not args.only or s[0] in args.only]
    values: dict[tuple[str, str], list[float]] = {}
    per_cpu: dict[tuple[str, str], list[float]] = {}
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
    lines = [
        "# ASGI: uvicorn with each --ws implementation",
        "",
        f"`benchmarks/asgi_bench.py --repeats {args.repeats} --duration {args.duration}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; uvicorn (httptools, uvloop), "
        "Starlette apps from servers/asgi_app.py, medians. Ratio: epws / "
        f"`{DEFAULT}` (uvicorn's default); for memory, lower is better.",
        "",
        "| scenario | " + " | ".join(IMPLEMENTATIONS) + f" | epws vs {DEFAULT} |",
        "| --- | " + " | ".join("---" for _ in IMPLEMENTATIONS) + " | --- |",
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
        default = table.get((name, DEFAULT))
        ratio = DASH
        if epws and default:
            r = statistics.median(epws) / statistics.median(default)
            ratio = f"{r:.2f}{TIMES}" if higher else f"{r:.2f}{TIMES} ({1 / r:.1f}{TIMES} less)"
        lines.append(f"| {title} ({unit}) | " + " | ".join(cells) + f" | {ratio} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
