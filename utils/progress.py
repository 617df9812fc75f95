"""Progress of a long loop over images: a tqdm bar on a terminal, otherwise a log line at a steady interval.

Each line says how many images are done of the total, the current stage (an attack) and its iteration,
the time elapsed and an estimate of the time left. The loop calls start_batch / finish_batch; whatever
runs inside a batch reports its iterations through `step` (an attack's callback), so nothing prints inside
attacks. The work of one image is split over the stages by their weights (e.g. network passes per image).
Log lines come from a step when `interval` seconds have passed, and from a background timer when a step
takes longer than that, so a log never stays silent for more than about `interval` seconds.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable, Optional, TextIO

from tqdm import tqdm

DEFAULT_INTERVAL = 30.0  # seconds between log lines when the output is not a terminal


def format_duration(seconds: float) -> str:
    """'1 h 02 min', '4 min 07 s' or '12 s' from a number of seconds >= 0."""
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class Progress:
    """Images done of `total`, the current stage and iteration, elapsed time and time left (from the work done)."""

    def __init__(self, total: int, weights: dict[str, float], log: logging.Logger, interval: float = DEFAULT_INTERVAL,
                 terminal: Optional[bool] = None, stream: TextIO = sys.stderr,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.log, self.interval, self.clock = total, log, interval, clock
        self.weights = {stage: max(w, 0.0) for stage, w in weights.items()}
        self.done, self.batch, self.stage_done, self.stage, self.position = 0, 0, 0.0, "", ""
        self.started = self.last_line = clock()
        self.mark = (0.0, 0.0)  # (fraction of the work done, elapsed seconds when it was reached)
        self.lock, self.stopped = threading.Lock(), threading.Event()
        is_terminal = stream.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, desc="images", unit="img", file=stream) if is_terminal else None
        if self.bar is None and interval > 0:
            threading.Thread(target=self.tick, name="progress", daemon=True).start()

    def tick(self) -> None:
        """Background timer: a line whenever `interval` seconds passed without one, until close()."""
        while not self.stopped.wait(self.interval):
            self.emit(force=False)

    def fraction(self, stage_fraction: float = 0.0) -> float:
        """Share of the run's work done: whole images plus the finished stages of the current batch."""
        per_image = sum(self.weights.values()) or 1.0
        in_batch = (self.stage_done + stage_fraction * self.weights.get(self.stage, 0.0)) / per_image
        return min((self.done + self.batch * in_batch) / max(self.total, 1), 1.0)

    def eta(self) -> Optional[float]:
        """Seconds left at the rate up to the last reported step, less the time since; None before any work."""
        fraction, at = self.mark
        if fraction <= 0.0:
            return None
        return max(at * (1.0 - fraction) / fraction - (self.clock() - self.started - at), 0.0)

    def start_batch(self, size: int) -> None:
        """A batch of `size` images begins."""
        self.batch, self.stage_done, self.stage, self.position = size, 0.0, "", ""

    def step(self, stage: str, iteration: int, iterations: int) -> None:
        """Stage `stage` (e.g. an attack) finished iteration `iteration` of `iterations`; the attacks' callback."""
        if stage != self.stage:
            self.stage_done += self.weights.get(self.stage, 0.0)
            self.stage = stage
        self.position = f"{stage} iteration {iteration}/{iterations}"
        self.report(self.fraction(iteration / max(iterations, 1)))

    def finish_batch(self) -> None:
        """The current batch is done and its results are written."""
        self.done += self.batch
        self.batch, self.stage_done, self.stage, self.position = 0, 0.0, "", ""
        self.report(self.fraction(), force=self.done >= self.total)

    def report(self, fraction: float, force: bool = False) -> None:
        """Record the work done; update the bar, or log a line if `interval` seconds passed (or when forced)."""
        with self.lock:
            self.mark = (fraction, self.clock() - self.started)
        if self.bar is not None:
            self.bar.n = round(fraction * self.total, 2)
            self.bar.set_postfix_str(self.position, refresh=False)
            self.bar.refresh()
            return
        self.emit(force)

    def emit(self, force: bool) -> None:
        """Log the current line if forced or if `interval` seconds passed since the last one."""
        with self.lock:
            now = self.clock()
            if force or now - self.last_line >= self.interval:
                self.last_line = now
                self.log.info("%s", self.line())

    def line(self) -> str:
        """'progress: 12/32 images done, now pgd_eot iteration 3/8; elapsed 1 min 10 s, about 3 min 05 s left'."""
        eta = self.eta()
        left = "estimating time left" if eta is None else f"about {format_duration(eta)} left"
        now = f", now {self.position}" if self.position else ""
        return (f"progress: {self.done}/{self.total} images done ({100 * self.mark[0]:.0f} % of the work){now}; "
                f"elapsed {format_duration(self.clock() - self.started)}, {left}")

    def close(self) -> None:
        """Stop the timer and close the bar."""
        self.stopped.set()
        if self.bar is not None:
            self.bar.close()
