"""Serving the HTTP API with several worker processes, each on a listening socket of its own.

Uvicorn's own ``workers`` hands every worker the same listening socket, and whichever worker is
awake accepts. A client that opens its keep-alive connections in a burst (a merchant's connection
pool, the payments benchmark) then lands on one worker: measured, one of two workers accepted all
eight connections and did all the work while the other idled. Here the supervisor binds one socket
per worker to the same address with ``SO_REUSEPORT``, and the kernel spreads new connections over
them by a hash of each connection's addresses.

- Every socket is bound and listening before any worker starts, so a taken address is an error at
  once, in the supervisor, with nothing started.
- The supervisor keeps the sockets. A worker that dies is replaced on its own socket, and the
  connections queued on it wait for the replacement instead of being refused. A worker that exits
  with an error before it ever served (a broken configuration would end every replacement the same
  way) stops the whole server, which then exits non-zero, and so does one that has not started serving
  within five minutes; one killed by a signal is replaced. A worker is pinged for health only once it
  serves, so a loaded machine that takes long to import the app does not get its workers killed as hung.
- The children are uvicorn's (``uvicorn.supervisors.multiprocess.Process``: spawned, answering the
  supervisor's health pings over a pipe), so they start, log and shut down as uvicorn's do. A ping is
  answered by a thread of the worker, which a hung event loop (a blocking call in async code, a loop
  of its own) would leave answering while every connection on that socket waits; so a ``Worker`` also
  has its event loop run a callback for each ping, and stops answering once one has waited longer than
  ``hung_after`` seconds. The supervisor then kills it and starts another on its socket.
- SIGINT or SIGTERM stops the workers gracefully (uvicorn finishes the requests in flight), then the
  supervisor.

Where the platform has no ``SO_REUSEPORT``, uvicorn's own supervisor and shared socket serve.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from types import FrameType

import uvicorn
from uvicorn._compat import asyncio_run
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Process

from clearhouse.kit.runtime import settle_heap

logger = logging.getLogger("clearhouse.serving")

APP = "clearhouse.app:create_app"
"""The app factory every worker process builds its app from."""

_STOPPING = (signal.SIGINT, signal.SIGTERM)

HUNG_AFTER = 30.0
"""Seconds a serving worker's event loop may go without running the callback of a health ping before
the worker counts as hung. Long enough for any honest stall (a garbage collection, a slow disk), short
enough that a stuck worker does not hold its share of the connections for long."""


PARENT_CHECK_SECONDS = 1.0
"""How often a serving worker checks that its supervisor is still there."""


class CannotListen(OSError):
    """The address cannot be had: another program listens on it, or it is not this machine's."""


def own_sockets(host: str, port: int, count: int, backlog: int = 2048) -> list[socket.socket]:
    """``count`` sockets listening on ``host``:``port`` together (``SO_REUSEPORT``). Port 0 takes a free
    port for the first and the same for the others. Raises ``CannotListen`` (none left open) when the
    address cannot be had, e.g. another program listens on it.

    ``SO_REUSEPORT`` would let these sockets join another program's listening on the port with it too
    (another server of this user, an old deployment), and the kernel would split the traffic between
    them; so the address is first bound once without it, which any listener already there refuses."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        if port:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError as error:
        for sock in sockets:
            sock.close()
        raise CannotListen(error.errno, error.strerror or str(error)) from error
    return sockets


class Worker(Process):
    """A uvicorn worker process whose answer to a health ping also says that its event loop runs.

    Each ping (every ``check_every`` seconds) asks the loop to run a small callback unless one is
    still waiting; the ping is answered at once, as uvicorn's are, until a callback has waited longer
    than ``hung_after`` seconds. Then it is not answered, the supervisor's ping times out, and the
    worker is killed and replaced."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], *, hung_after: float = HUNG_AFTER):
        super().__init__(config, sockets)
        self.hung_after = hung_after
        self.loop: asyncio.AbstractEventLoop | None = None  # set in the child, once its loop runs
        self.asked: float | None = None  # when the callback still waiting was scheduled (monotonic)

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover (the child)
        settle_heap()
        threading.Thread(target=self.always_pong, daemon=True).start()
        threading.Thread(target=self.exit_with_the_supervisor, args=(os.getppid(),), daemon=True).start()
        server = self.server

        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await server.serve(sockets=sockets)

        asyncio_run(serve(), loop_factory=self.config.get_loop_factory())

    def exit_with_the_supervisor(self, supervisor: int) -> None:  # pragma: no cover (the child)
        """A supervisor killed outright (SIGKILL, the OOM killer) cannot stop its workers: each notices
        it is gone (the worker is re-parented) and shuts down as on SIGTERM, finishing its requests, so
        the port is free for the next ``serve``."""
        while os.getppid() == supervisor:
            time.sleep(PARENT_CHECK_SECONDS)
        logger.warning("worker [%s]: the supervisor [%s] is gone; shutting down", os.getpid(), supervisor)
        self.server.should_exit = True

    def pong(self) -> None:  # pragma: no cover (the child)
        self.child_conn.recv()
        if self.loop is not None and self.server.started and not self._loop_runs():
            logger.error("worker [%s]: its event loop has not run for %s s; not answering the health check",
                         os.getpid(), self.hung_after)
            return
        self.child_conn.send(self.server.started)

    def _loop_runs(self) -> bool:
        asked = self.asked
        if asked is not None:
            return time.monotonic() - asked <= self.hung_after
        self.asked = time.monotonic()
        try:
            self.loop.call_soon_threadsafe(self._ran)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed: the worker is on its way out
            self.asked = None
        return True

    def _ran(self) -> None:
        self.asked = None


class Supervisor:
    """Runs one uvicorn worker process per socket and keeps each alive until told to stop."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], *, check_every: float = 0.5,
                 start_timeout: float = 300.0, hung_after: float = HUNG_AFTER) -> None:
        self.config = config
        self.hung_after = hung_after
        self.sockets = sockets
        self.check_every = check_every
        self.workers: list[Worker] = []
        self.serving: set[int] = set()  # the slots whose worker has answered that it serves
        self.started: dict[int, float] = {}  # when each slot's worker was started (monotonic)
        self.start_timeout = start_timeout
        self.stopping: int | None = None  # the signal that asked to stop; a plain flag, safe to set in a handler
        self.failed = False

    def _start(self, index: int) -> Worker:
        worker = Worker(self.config, [self.sockets[index]], hung_after=self.hung_after)
        worker.start()
        self.started[index] = time.monotonic()
        return worker

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only a flag: a handler that took a lock (an Event, logging) could find it held by the very
        # code it interrupted, and wait forever.
        self.stopping = signum

    def _done(self) -> bool:
        return self.stopping is not None or self.failed

    def run(self) -> bool:
        """Serve until SIGINT or SIGTERM; False when a worker could not start."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in _STOPPING}
        try:
            for index in range(len(self.sockets)):
                self.workers.append(self._start(index))  # each kept at once: stopped in ``finally`` whatever happens
            logger.info("supervisor [%s] started %s workers", os.getpid(), len(self.workers))
            while not self._done():
                time.sleep(self.check_every)
                if not self._done():
                    self._replace_dead()
            if self.stopping is not None:
                logger.info("received %s, stopping the workers", signal.Signals(self.stopping).name)
        finally:
            for worker in self.workers:
                worker.terminate()
            for worker in self.workers:
                worker.join()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return not self.failed

    def _replace_dead(self) -> None:
        timeout = self.config.timeout_worker_healthcheck
        for index, worker in enumerate(self.workers):
            if self._done():
                return
            never_started = False
            if index in self.serving:
                if worker.is_alive(timeout=timeout):  # a ping: a worker that stops answering is hung (``Worker``)
                    continue
            elif worker.process.is_alive():
                # Starting (a loaded machine can take many seconds to import the app): not pinged to
                # death, only asked whether it serves yet, up to a deadline.
                if worker.is_ready(timeout=0.2):
                    self.serving.add(index)
                    continue
                if time.monotonic() - self.started[index] < self.start_timeout:
                    continue
                logger.error("worker [%s] did not start serving in %s s", worker.pid, self.start_timeout)
                never_started = True
            worker.kill()  # it may hang rather than be gone
            worker.join()
            exited = worker.exitcode is not None and worker.exitcode > 0  # not killed by a signal
            if never_started or worker.exitcode == STARTUP_FAILURE or (exited and index not in self.serving):
                # It gave up before it served: the app, the settings or the database are wrong, and
                # every replacement would end the same way.
                logger.error("worker [%s] exited before it served (exit code %s); stopping", worker.pid,
                             worker.exitcode)
                self.failed = True
                return
            logger.warning("worker [%s] ended (exit code %s); starting another on its socket",
                           worker.pid, worker.exitcode)
            self.serving.discard(index)
            self.workers[index] = self._start(index)


def serve(*, host: str, port: int, workers: int, log_level: str = "warning") -> bool:
    """Serve ``APP`` with ``workers`` processes (each builds its own app from the settings); False when a
    worker could not start."""
    if not hasattr(socket, "SO_REUSEPORT"):  # uvicorn's way: one socket shared by all
        uvicorn.run(APP, factory=True, host=host, port=port, workers=workers, log_level=log_level, log_config=None)
        return True
    # log_config=None, as cli.serve: uvicorn's lines go through the process's own (JSON) handler.
    config = uvicorn.Config(APP, factory=True, host=host, port=port, workers=workers, log_level=log_level,
                            log_config=None)
    sockets = own_sockets(host, port, workers, backlog=config.backlog)
    try:
        return Supervisor(config, sockets).run()
    finally:
        for sock in sockets:
            sock.close()
