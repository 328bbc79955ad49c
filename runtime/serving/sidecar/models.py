"""The models the sidecar serves (`Models`): the champion bundle (--bundle) and its shadow
challenger (--challenger), loaded at start and reloaded between batches on SIGHUP, or when
--watch sees their files change.

A reload verifies and loads the new bundle first; if that fails the old pipeline keeps
serving (counted in fraudscore_model_reloads_total{result="failure"}). A challenger that
fails to load is counted and logged, and the champion is served regardless.

    models = Models(config, metrics)       # loads the pipeline: any failure is raised
    models.reload_asked = True             # SIGHUP
    models.maybe_reload()                  # between batches
    models.pipeline.score_batch(values)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fraudscore.serving.bundle import load_bundle
from fraudscore.serving.pipeline import Challenger, Pipeline, load_challenger
from fraudscore.serving.scorer import Scorer
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.state import input_spec

log = logging.getLogger(__name__)


class Models:
    """The serving pipeline (`pipeline`), the feature specification raw mode computes (`spec`,
    None in feature mode), and their reloads."""

    def __init__(self, config: SidecarConfig, metrics):
        self.config = config
        self.metrics = metrics
        self.spec = None
        self.pipeline = self.load()
        self.reload_asked = False
        self._watched = self._files()
        self._last_watch = time.monotonic()

    def load(self, serving: Pipeline | None = None) -> Pipeline:
        """The champion and its challenger, at start (`serving` None: any failure is raised) or
        on a reload (the champion's failure is raised and the old pipeline kept; the
        challenger's is counted and logged, and the one `serving` has stays if it still fits
        the new champion)."""
        bundle = load_bundle(self.config.bundle)
        scorer = Scorer(bundle, device=self.config.device, intra_op_threads=self.config.threads)
        self.spec = input_spec(self.config, bundle.manifest, self.spec)
        challenger = self._challenger(bundle.manifest, serving)
        pipeline = Pipeline(bundle.manifest, scorer, self.config.max_message_bytes, challenger=challenger)
        self.metrics.set_model(bundle.manifest)
        self.metrics.set_challenger(*((None, None) if challenger is None else (challenger.version, challenger.validation)))
        log.info("model %s (%s) on %s, threshold %.6g%s", bundle.manifest.model_version, bundle.manifest.model_kind,
                 scorer.provider, pipeline.threshold,
                 "" if challenger is None else f"; shadow challenger {challenger.version}, threshold {challenger.threshold:.6g}")
        return pipeline

    def _challenger(self, champion, serving: Pipeline | None) -> Challenger | None:
        c = self.config
        if not c.challenger:
            return None
        if serving is None:
            return load_challenger(c.challenger, champion, c.device, c.threads)
        try:
            return load_challenger(c.challenger, champion, c.device, c.threads)
        except Exception as exc:  # whatever the bundle's failure, the champion keeps serving
            previous = serving.challenger
            kept = previous if previous is not None and not previous.mismatch(champion) else None
            self.metrics.challenger_failures.labels(previous.version if previous else "none", "load").inc()
            log.error("challenger reload failed, %s: %s",
                      f"still shadowing with {kept.version}" if kept else "no challenger until the next reload", exc)
            return kept

    def _files(self) -> tuple:
        """What --watch compares: where the bundle and the challenger resolve to (a link moved to
        another bundle is a change), and their files."""
        state = []
        for root in (self.config.bundle, *((self.config.challenger,) if self.config.challenger else ())):
            try:
                state.append((str(Path(root).resolve()), None, None))
                state += [(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(Path(root).iterdir())]
            except OSError:
                state.append((str(root), None, None))
        return tuple(state)

    def maybe_reload(self) -> None:
        """Between batches: reload when asked (SIGHUP), or with --watch when the files changed."""
        if self.config.watch and time.monotonic() - self._last_watch >= self.config.watch_interval_s:
            self._last_watch = time.monotonic()
            files = self._files()
            if files != self._watched:
                self._watched = files
                self.reload_asked = True
        if not self.reload_asked:
            return
        self.reload_asked = False
        try:
            new = self.load(self.pipeline)
        except Exception as exc:  # any failure keeps the old model serving
            self.metrics.reloads.labels("failure").inc()
            log.error("model reload failed, still serving %s: %s", self.pipeline.model_version, exc)
            return
        self.pipeline = new
        self.metrics.reloads.labels("success").inc()
        log.info("model reloaded: now serving %s", new.model_version)
