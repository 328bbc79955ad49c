"""`fraudscore run --workers N`: N sidecar processes in one consumer group, under a supervisor.

One Python process scores on one core at most (the GIL), so a host with more cores runs
more processes. Each worker is a whole `Sidecar` with the same configuration: the consumer
group splits the input partitions between them exactly as it would between hosts, so
delivery, offsets, rebalances and raw-mode state are those of independent instances.

Ports, with `--metrics-port P`: the supervisor answers on P (`/healthz`: the supervisor is
alive and restarting its workers; `/readyz`: every worker is ready; `/metrics`: workers
alive, restarts), worker i on P+1+i (the sidecar's own /metrics, /healthz, /readyz):
scrape P+1..P+N. With P = 0 every port is a free one, written to the log.

A worker that dies (killed, out of memory, crashed) is started again after 1 s, doubling to
30 s while it keeps dying; one that exits 2 (configuration, bundle, a metrics port taken) or
3 (broker, credentials, topics, state restore) stops them all, and the supervisor exits
with that code, as a single process would; one that dies 5 times in a row within 10 s of
starting stops them all too (exit 1). SIGTERM/SIGINT stop every worker (each finishes and
commits its batch in flight, within --drain-timeout + 2 s, or exits 4: process.StopBound);
SIGHUP reloads the bundle in every worker.

    supervisor = Supervisor(config, log_level="INFO")   # config.workers == 4
    exit_code = supervisor.run()
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass

from fraudscore.errors import FraudscoreError
from fraudscore.serving.sidecar.clients import default_transactional_id
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.process import GRACE_S, OVERDUE_EXIT

log = logging.getLogger(__name__)

STOP_CODES = (2, 3)
"""Exit codes that no restart can fix: every worker would exit the same way."""
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0
"""A worker that ran this long before dying is restarted after FIRST_BACKOFF_S again."""
QUICK_DEATH_S = 10.0
MAX_QUICK_DEATHS = 5
"""A worker that dies this many times in a row within QUICK_DEATH_S of starting cannot start
(a port taken, a library missing): the supervisor stops them all and exits 1."""


def worker_configs(config: SidecarConfig) -> list[SidecarConfig]:
    """The configuration of each worker: its own metrics port and (exactly once) transactional id."""
    n = config.workers
    ports = [_free_port(config.metrics_host) for _ in range(n)] if config.metrics_port == 0 else \
        [config.metrics_port + 1 + i for i in range(n)]
    out = []
    for i, port in enumerate(ports):
        tid = f"{config.transactional_id or default_transactional_id(config)}-w{i}" if config.exactly_once else ""
        member = f"{config.group_instance_id}-w{i}" if config.group_instance_id else ""
        out.append(dataclasses.replace(config, workers=1, metrics_port=port, transactional_id=tid, group_instance_id=member))
    return out


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((_local(host), 0))
        return s.getsockname()[1]


def _local(host: str) -> str:
    """An address of this host to reach a port bound to `host`."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def worker_main(config: SidecarConfig, index: int, log_level: str) -> None:
    """A worker process: one Sidecar; exits with its exit code."""
    from fraudscore.serving.sidecar.loop import Sidecar
    from fraudscore.serving.sidecar.process import configure_logging, install_signal_handlers

    configure_logging(log_level, worker=index)
    # Until the Sidecar exists (loading the bundle and the ONNX Runtime session takes a
    # moment, longer on a GPU), a stop ends the worker at once, cleanly (no client exists
    # yet, nothing to finish), and a reload is remembered.
    early: set[str] = set()

    def stop_early(*_args) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_early)
    signal.signal(signal.SIGINT, stop_early)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: early.add("reload"))
    try:
        sidecar = Sidecar(config)
        install_signal_handlers(sidecar)
        code = sidecar.run()
    except FraudscoreError as exc:
        log.error("%s", exc)
        code = exc.exit_code
    sys.exit(code)


@dataclass
class Worker:
    index: int
    config: SidecarConfig
    process: multiprocessing.process.BaseProcess | None = None
    started: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S
    restart_at: float | None = None
    restarts: int = 0
    quick_deaths: int = 0  # in a row, each within QUICK_DEATH_S of its start


class Supervisor:
    """Starts `config.workers` sidecar processes, restarts the ones that die, stops them together."""

    def __init__(self, config: SidecarConfig, log_level: str = "INFO"):
        config.validate()
        self.config = config
        self.log_level = log_level
        self.context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self.workers = [Worker(i, c) for i, c in enumerate(worker_configs(config))]
        self._stop = False
        self._reload = False
        self._ready = False
        self._last_ready_check = 0.0
        self.http = None
        self.metrics = None

    def request_stop(self, *_args) -> None:
        self._stop = True

    def request_reload(self, *_args) -> None:
        self._reload = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self.request_reload)

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT or a worker's unfixable exit; the exit code."""
        self._serve_health()
        log.info("%d workers in group %s", len(self.workers), self.config.group_id)
        for worker in self.workers:
            self._start(worker)
        code = 0
        try:
            while not self._stop:
                if self._reload:
                    self._reload = False
                    self._signal_all(signal.SIGHUP)
                code = self._check_workers()
                if code:
                    break
                if time.monotonic() - self._last_ready_check >= 1.0:
                    self._last_ready_check = time.monotonic()
                    self._check_ready()
                time.sleep(0.1)
        finally:
            code = self._stop_all(code)
            if self.http is not None:
                self.http.close()
        return code

    def _start(self, worker: Worker) -> None:
        worker.process = self.context.Process(target=worker_main, args=(worker.config, worker.index, self.log_level),
                                              name=f"fraudscore-worker-{worker.index}", daemon=False)
        worker.process.start()
        log.info("worker %d started: pid %d, metrics on port %d", worker.index, worker.process.pid,
                 worker.config.metrics_port)
        worker.started = time.monotonic()
        worker.restart_at = None
        self._update_metrics()

    def _check_workers(self) -> int:
        """Restart dead workers when their back-off has passed; a stop code for an unfixable exit."""
        now = time.monotonic()
        for w in self.workers:
            if w.restart_at is not None:
                if now >= w.restart_at and not self._stop:
                    w.restarts += 1
                    self.metrics["restarts"].labels(str(w.index)).inc()
                    log.warning("starting worker %d again (restart %d)", w.index, w.restarts)
                    self._start(w)
                continue
            if w.process is None or w.process.is_alive():
                continue
            exit_code = w.process.exitcode
            self._update_metrics()
            if exit_code in STOP_CODES:
                log.error("worker %d exited %d (configuration, broker or state): stopping every worker", w.index, exit_code)
                return exit_code
            w.quick_deaths = w.quick_deaths + 1 if now - w.started < QUICK_DEATH_S else 0
            if w.quick_deaths >= MAX_QUICK_DEATHS:
                log.error("worker %d died %d times in a row within %.0f s of starting (last exit code %s): it cannot "
                          "start; stopping every worker (its log lines above say why)", w.index, w.quick_deaths,
                          QUICK_DEATH_S, exit_code)
                return 1
            if now - w.started >= HEALTHY_AFTER_S:
                w.backoff_s = FIRST_BACKOFF_S
            delay, w.backoff_s = w.backoff_s, min(MAX_BACKOFF_S, w.backoff_s * 2)
            w.restart_at = now + delay
            log.error("worker %d died (exit code %s); starting it again in %.0f s", w.index, exit_code, delay)
        return 0

    def _signal_all(self, signum: int) -> None:
        for w in self.workers:
            if w.process is not None and w.process.is_alive():
                try:
                    os.kill(w.process.pid, signum)
                except ProcessLookupError:  # it died since is_alive(); the next check restarts it
                    pass

    def _stop_all(self, code: int) -> int:
        """SIGTERM every worker, wait for each to finish its batch, SIGKILL what is left."""
        self._signal_all(signal.SIGTERM)
        # Each worker ends itself within --drain-timeout + GRACE_S (StopBound); the kill is for a
        # worker that cannot even do that.
        deadline = time.monotonic() + self.config.drain_timeout_s + GRACE_S + 5.0
        codes = []
        for w in self.workers:
            if w.process is None:
                continue
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                log.error("worker %d did not stop in time; killing it (its batch in flight is read again)", w.index)
                w.process.kill()
                w.process.join(5)
            code_w = w.process.exitcode if w.restart_at is None else 0
            # Killed by the stop signal itself (before its handler was installed): a clean stop.
            codes.append(0 if code_w in (-signal.SIGTERM, -signal.SIGINT) else code_w)
        self._update_metrics()
        if code:
            return code
        bad = [c for c in codes if c not in (0, None)]
        if bad and all(c == OVERDUE_EXIT for c in bad):
            return OVERDUE_EXIT  # a worker's stop overran its bound, as a single process would say
        return 1 if bad else 0

    def ready(self) -> bool:
        """Every worker alive and, at the last check (once a second), answering 200 on its /readyz.
        Cached: a probe of the supervisor answers at once, whatever the number of workers."""
        return self._ready and all(w.process is not None and w.process.is_alive() for w in self.workers)

    def _check_ready(self) -> None:
        host = _local(self.config.metrics_host)
        ready = True
        for w in self.workers:
            try:
                with urllib.request.urlopen(f"http://{host}:{w.config.metrics_port}/readyz", timeout=0.5) as r:
                    ready = ready and r.status == 200
            except OSError:  # not listening yet, or 503 (an HTTPError is an OSError)
                ready = False
        self._ready = ready

    def _serve_health(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        from fraudscore.serving.metrics import HealthServer

        registry = CollectorRegistry()
        self.metrics = {
            "configured": Gauge("fraudscore_workers_configured", "Worker processes asked for (--workers).",
                                registry=registry),
            "alive": Gauge("fraudscore_workers_alive", "Worker processes running now.", registry=registry),
            "restarts": Counter("fraudscore_worker_restarts", "Workers started again after dying.", ["worker"],
                                registry=registry),
        }
        self.metrics["configured"].set(len(self.workers))
        for w in self.workers:
            self.metrics["restarts"].labels(str(w.index))
        self.http = HealthServer(self.config.metrics_host, self.config.metrics_port, registry, self.ready)
        log.info("supervisor on http://%s:%d (/healthz, /readyz of all workers, /metrics)",
                 self.config.metrics_host, self.http.port)

    def _update_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics["alive"].set(sum(1 for w in self.workers if w.process is not None and w.process.is_alive()))
