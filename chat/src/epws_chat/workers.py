"""``epws-chat --workers N``: N chat processes sharing one listening port, supervised.

One Python process uses one core; N processes use N. Each worker is the ordinary
single-process chat server, started by re-invoking the same command
(``python -m epws_chat <the same flags> --worker-index I``) and binding the same port
with SO_REUSEPORT, so the kernel spreads incoming connections over them. The
workers share rooms through the broker (Redis), which is why ``--workers`` refuses
the memory broker.

Why subprocesses rather than ``multiprocessing``: a worker is then exactly the
program a user would run by hand (same flags, same code path, same event loop
choice), a fresh interpreter with nothing inherited but the environment, and
nothing has to be pickled. ``multiprocessing``'s 'spawn' context would give the same
isolation with more machinery (a resource tracker, pickled arguments); 'fork' is
unsafe with a running event loop.

The parent (this module):

* reserves the port when ``--addr`` asks for port 0 (a bound, never-listening socket
  with SO_REUSEPORT, held while the parent runs), so every worker binds the same one;
* starts the workers in their own sessions, so a terminal's Ctrl-C reaches only the
  parent, which then stops each worker exactly once (a second signal to a worker
  means "drop every connection now");
* waits for each worker's ``ready`` line (on the worker's stdout) before it logs
  ``listening on ...``;
* restarts a worker that dies, after a backoff that doubles while the worker keeps
  dying young (0.5 s up to 10 s), so a crash loop does not spin;
* on SIGTERM or SIGINT sends SIGTERM to every worker (each closes its clients with
  1001), waits for them within ``--shutdown-timeout`` plus a margin, kills what is
  left and exits 0; a second signal is passed on, so the workers drop their clients
  at once.

Each worker keeps a pipe from the parent on its stdin: when the parent dies without
cleaning up (SIGKILL), the pipe closes and the worker shuts down by itself instead
of serving forever unsupervised.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Sequence

__all__ = ["RESTART_BACKOFF", "Supervisor", "reserve_port", "supervise"]

logger = logging.getLogger("epws_chat.workers")

#: Smallest and largest delay before a dead worker is restarted.
RESTART_BACKOFF = (0.5, 10.0)
#: A worker that ran this long before dying resets the backoff.
HEALTHY_AFTER = 10.0
#: Seconds a worker may take to start listening.
START_TIMEOUT = 30.0


def reserve_port(host: str | None, port: int) -> tuple[socket.socket | None, int]:
    """For port 0, bind (without listening) a SO_REUSEPORT socket and return its port.

    The socket only holds the port; a socket that does not listen gets no
    connections, so the workers' listening sockets receive all of them.
    """
    if port != 0:
        return None, port
    family, kind, proto, _, address = socket.getaddrinfo(
        host or "0.0.0.0", 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock, int(sock.getsockname()[1])


class _Worker:
    """One worker slot: its index, its current process, its restart backoff."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.delay = RESTART_BACKOFF[0]
        #: The worker's private ops port (its ``ready ops=PORT`` line), 0: none.
        self.ops_port = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """Starts, watches, restarts and stops the workers.

    Args:
        argv: the command line of each worker, after ``python -m epws_chat``
            (the parent's own flags with ``--addr`` fixed to the resolved port).
        workers: how many.
        shutdown_timeout: the workers' ``--shutdown-timeout``; the parent waits that
            long plus a margin before it kills a worker that has not exited.
    """

    def __init__(self, argv: Sequence[str], workers: int, shutdown_timeout: float) -> None:
        self.argv = list(argv)
        self.workers = [_Worker(i) for i in range(1, workers + 1)]
        self.shutdown_timeout = shutdown_timeout
        self.stopping = False
        self._stop: asyncio.Event | None = None
        self._signals = 0

    async def _spawn(self, worker: _Worker) -> bool:
        """Start ``worker`` and wait until it listens; False if it died first."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "epws_chat",
            *self.argv,
            "--worker-index",
            str(worker.index),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # the worker logs to the parent's stderr
            start_new_session=True,
        )
        worker.proc = proc
        worker.started = time.monotonic()
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                line = await proc.stdout.readline()
        except TimeoutError:
            line = b""
            logger.error(
                "worker %d (pid %d) did not start listening in time", worker.index, proc.pid
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        words = line.split()
        if words[:1] != [b"ready"]:
            status = await proc.wait()
            logger.error(
                "worker %d (pid %d) failed to start (exit %s)", worker.index, proc.pid, status
            )
            return False
        worker.ops_port = 0
        for word in words[1:]:
            if word.startswith(b"ops="):
                worker.ops_port = int(word[4:])
        logger.info("worker %d ready (pid %d)", worker.index, proc.pid)
        return True

    def ops_ports(self) -> list[int]:
        """The ops ports of the workers running now."""
        return [
            w.ops_port
            for w in self.workers
            if w.ops_port and w.proc is not None and w.proc.returncode is None
        ]

    async def _watch(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it dies, until the supervisor stops."""
        assert self._stop is not None
        while not self.stopping:
            proc = worker.proc
            assert proc is not None
            status = await proc.wait()
            worker.ops_port = 0
            if self.stopping:
                return
            lived = time.monotonic() - worker.started
            if lived >= HEALTHY_AFTER:
                worker.delay = RESTART_BACKOFF[0]
            logger.warning(
                "worker %d (pid %d) exited with status %s after %.1f s; restarting in %.1f s",
                worker.index,
                proc.pid,
                status,
                lived,
                worker.delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(worker.delay):
                    await self._stop.wait()
            if self.stopping:
                return
            worker.delay = min(RESTART_BACKOFF[1], worker.delay * 2)
            await self._spawn(worker)  # a failed start is watched (and retried) the same way

    def _on_signal(self, signum: int) -> None:
        assert self._stop is not None
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            logger.info("%s: stopping %d worker(s)", name, len(self.workers))
            self.stopping = True
            self._stop.set()
        else:
            logger.warning("second %s: workers drop every connection now", name)
            self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            proc = worker.proc
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    async def run(self, banner: str, ops_addr: tuple[str | None, int] | None = None) -> int:
        """Run until SIGINT/SIGTERM; the exit status (1 if the workers cannot start).

        With ``ops_addr`` the supervisor serves the whole server's ops routes there
        (:mod:`epws_chat.fleet`).
        """
        loop = asyncio.get_running_loop()
        ops = None
        if ops_addr is not None:
            from .fleet import FleetRoutes
            from .ops import serve_ops

            ops = await serve_ops(FleetRoutes(self.ops_ports), *ops_addr)
            port = ops.sockets[0].getsockname()[1]
            logger.info("ops routes served at http://%s:%d/", ops_addr[0] or "localhost", port)
        self._stop = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)
        watchers: list[asyncio.Task[None]] = []
        try:
            started = await asyncio.gather(*(self._spawn(w) for w in self.workers))
            if not all(started):
                logger.critical("the workers could not start; stopping")
                self.stopping = True
                return 1
            pids = ", ".join(str(w.pid) for w in self.workers)
            logger.info("%s with %d workers (pids %s)", banner, len(self.workers), pids)
            watchers = [loop.create_task(self._watch(w)) for w in self.workers]
            await self._stop.wait()
            return 0
        finally:
            self.stopping = True
            if ops is not None:
                ops.close()
            await self._stop_all()
            for task in watchers:
                task.cancel()
            for task in watchers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for signum in signals:
                loop.remove_signal_handler(signum)

    async def _stop_all(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still there after the bound."""
        self._signal_all(signal.SIGTERM)
        procs = [w.proc for w in self.workers if w.proc is not None]
        try:
            async with asyncio.timeout(self.shutdown_timeout + 5):
                await asyncio.gather(*(p.wait() for p in procs))
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    logger.error("worker pid %d did not stop in time: killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        for proc in procs:
            for pipe in (proc.stdin,):
                if pipe is not None:
                    pipe.close()
        logger.info("stopped")


def supervise(args: argparse.Namespace, argv: Sequence[str], host: str | None, port: int) -> int:
    """Run ``args.workers`` workers of the command ``argv`` on one port; the exit status."""
    try:
        reserved, port = reserve_port(host, port)
    except OSError as exc:
        logger.critical("cannot serve on %s: %s", args.addr, exc)
        return 1
    shown = host if host is not None else ""
    addr = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
    worker_argv = [*argv, "--addr", addr, "--workers", "1"]
    ops_addr = None
    if args.ops_addr:  # the parent takes the address; each worker a private port
        from .options import parse_addr

        ops_addr = parse_addr(args.ops_addr)
        worker_argv += ["--ops-addr", "127.0.0.1:0"]
    scheme = "https" if args.certfile else "http"
    display = host if host is not None else "localhost"
    if ":" in display:
        display = f"[{display}]"
    banner = f"chat server listening on {scheme}://{display}:{port}/"
    supervisor = Supervisor(worker_argv, args.workers, args.shutdown_timeout)
    try:
        # The parent only waits on pipes and child processes: the default loop is enough.
        return asyncio.run(supervisor.run(banner, ops_addr))
    finally:
        if reserved is not None:
            reserved.close()
