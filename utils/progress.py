"""Progress of a long loop over images: a tqdm bar on a terminal, otherwise a log line at a steady interval.

Each line says how many images are done of the total, the current stage (an attack) and its iteration,
the time elapsed and an estimate of the time left. The loop calls start_batch / finish_batch; whatever
runs inside a batch reports its iterations through `step` (an attack's callback), so nothing prints inside
attacks. The work of one image is split over the stages by their weights (e.g. network passes per image).
"""
from __future__ import annotations

import logging
import sys
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
        is_terminal = stream.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, desc="images", unit="img", file=stream) if is_terminal else None

    def fraction(self, stage_fraction: float = 0.0) -> float:
        """Share of the run's work done: whole images plus the finished stages of the current batch."""
        per_image = sum(self.weights.values()) or 1.0
        in_batch = (self.stage_done + stage_fraction * self.weights.get(self.stage, 0.0)) / per_image
        return min((self.done + self.batch * in_batch) / max(self.total, 1), 1.0)

    def eta(self, fraction: float) -> Optional[float]:
        """Seconds left at the rate so far, or None before any work is done."""
        elapsed = self.clock() - self.started
        return None if fraction <= 0.0 else elapsed * (1.0 - fraction) / fraction

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
        """Update the bar, or log a line when `interval` seconds passed since the last one (or when forced)."""
        if self.bar is not None:
            self.bar.n = round(fraction * self.total, 2)
            self.bar.set_postfix_str(self.position, refresh=False)
            self.bar.refresh()
            return
        now = self.clock()
        if force or now - self.last_line >= self.interval:
            self.last_line = now
            self.log.info("%s", self.line(fraction))

    def line(self, fraction: float) -> str:
        """'progress: 12/32 images done, now pgd_eot iteration 3/8; elapsed 1 min 10 s, about 3 min 05 s left'."""
        eta = self.eta(fraction)
        left = "estimating time left" if eta is None else f"about {format_duration(eta)} left"
        now = f", now {self.position}" if self.position else ""
        return (f"progress: {self.done}/{self.total} images done ({100 * fraction:.0f} % of the work){now}; "
                f"elapsed {format_duration(self.clock() - self.started)}, {left}")

    def close(self) -> None:
        """Close the bar (a no-op for log lines)."""
        if self.bar is not None:
            self.bar.close()
