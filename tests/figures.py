"""Checks on the matplotlib figures the experiments return: labelled axes, a legend, one 95 % interval per curve."""
from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D


def labelled_lines(ax: Axes) -> list[Line2D]:
    """The curves of ax that carry a legend label (matplotlib names unlabelled artists '_child...')."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def band_spans(band: PolyCollection, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of a fill_between polygon at each x."""
    vertices = band.get_paths()[0].vertices
    low = np.array([vertices[np.isclose(vertices[:, 0], v), 1].min() for v in x])
    high = np.array([vertices[np.isclose(vertices[:, 0], v), 1].max() for v in x])
    return low, high


def errorbar_spans(container: ErrorbarContainer) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, low, high) of an errorbar container's data line and its vertical bars."""
    line, _, (bars, *_) = container.lines
    segments = np.array(bars.get_segments())
    return (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float),
            segments[:, :, 1].min(axis=1), segments[:, :, 1].max(axis=1))


def check_curve_axes(ax: Axes) -> int:
    """Assert ax has x / y labels, a legend naming every curve, and an interval around each curve's points;
    return the number of curves."""
    assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), "axis labels missing"
    legend = ax.get_legend()
    assert legend is not None, "legend missing"
    entries = [t.get_text() for t in legend.get_texts()]
    errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer) and c.has_yerr]
    if errorbars:
        assert len(errorbars) == len(entries) == len({c.get_label() for c in errorbars})
        for container in errorbars:
            x, y, low, high = errorbar_spans(container)
            assert len(low) == len(x) and bool(np.all(low <= y + 1e-9)) and bool(np.all(y <= high + 1e-9))
        return len(entries)
    lines = labelled_lines(ax)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert [line.get_label() for line in lines] == entries and len(bands) == len(lines) > 0, "one band per curve"
    for line, band in zip(lines, bands):
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        low, high = band_spans(band, x)
        assert bool(np.all(low <= y + 1e-9)) and bool(np.all(y <= high + 1e-9)), f"{line.get_label()} leaves its band"
    return len(entries)


def check_figure(fig: Figure, curves: list[int]) -> None:
    """Every axes of fig passes check_curve_axes, axes i with curves[i] curves."""
    assert [check_curve_axes(ax) for ax in fig.get_axes()] == curves
