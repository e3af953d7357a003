"""/stats charts (matplotlib, Agg): accuracy over time with promotions marked, and a confusion view."""

from __future__ import annotations

import bisect
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors
import matplotlib.ticker
import numpy as np
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bot.i18n import Translator, translator

# Fonts with Chinese glyphs, tried in order; without one the chart falls back to English labels.
_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
              "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "AR PL UMing CN")
_MIN_SPAN_DAYS = 1 / 24


@dataclass(frozen=True)
class AccuracyPoint:
    """Accuracy over a group of consecutive labelled digits, placed at the group's last label."""

    at: datetime
    count: int
    accuracy: float  # of the answers given
    base_accuracy: float  # of the base model's own answers on the same digits


@dataclass(frozen=True)
class ChartData:
    points: Sequence[AccuracyPoint]
    promotions: Sequence[tuple[datetime, int]]  # (when, personal model version)
    confusion: Sequence[Sequence[int]]  # 10x10 counts: [what the user wrote][what was answered]


# File names of CJK fonts installed after matplotlib built its font cache (e.g. by scripts/services.sh).
_CJK_FILES = ("wqy-microhei", "wqy-zenhei", "notosanscjk", "sourcehansans")


@lru_cache(maxsize=1)
def _cjk_font() -> str | None:
    """The first Chinese-capable font found; also looks for font files newer than matplotlib's cache."""
    def known() -> str | None:
        available = {font.name for font in font_manager.fontManager.ttflist}
        return next((name for name in _CJK_FONTS if name in available), None)

    if (found := known()) is not None:
        return found
    for path in font_manager.findSystemFonts():
        if any(part in path.lower().replace("-", "").replace("_", "") for part in
               (name.replace("-", "") for name in _CJK_FILES)):
            font_manager.fontManager.addfont(path)
    return known()


# Sized for a phone: Telegram shows a photo at most 1280 px on its long side, in a bubble a few hundred
# (CSS) pixels wide, so the two panels are stacked (portrait) and every text is at least MIN_FONT_PT.
FIGSIZE_IN = (6.4, 8.0)
DPI = 160  # 1024 x 1280 px
MIN_FONT_PT = 11.0
_TITLE_PT, _LABEL_PT, _TICK_PT, _CELL_PT = 15.0, 13.0, 12.0, 12.0
_FEW_POINTS = 6  # up to this many points: big markers and each point's value written next to it
_DISCRETE_PEAK = 12  # up to this count: one colour per whole number in the colour scale


def render_stats_chart(data: ChartData, _: Translator) -> bytes:
    """A PNG: accuracy over time (answers given vs base model) above the wrote-vs-answered matrix."""
    buffer = io.BytesIO()
    build_stats_figure(data, _).savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def build_stats_figure(data: ChartData, _: Translator) -> Figure:
    """The /stats figure. A bare Figure (no pyplot state), so charts can render in several threads at once."""
    font = _cjk_font()
    if _.language.startswith("zh") and font is None:
        _ = translator("en")
    text: dict[str, Any] = {"fontfamily": [font, "DejaVu Sans"]} if font else {}
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    ax_time, ax_conf = fig.subplots(2, 1, height_ratios=[1, 1.45])
    _plot_accuracy(ax_time, data, _, text)
    _plot_confusion(fig, ax_conf, data, _, text)
    for ax in fig.axes:
        ax.tick_params(labelsize=_TICK_PT)
        for label in (*ax.get_xticklabels(), *ax.get_yticklabels()):
            if text:
                label.set_fontfamily(text["fontfamily"])
    return fig


def _plot_accuracy(ax: Axes, data: ChartData, _: Translator, text: dict[str, Any]) -> None:
    ax.set_title(_("Accuracy over time"), fontsize=_TITLE_PT, **text)
    ax.set_ylim(-0.02, 1.16)  # room above 100 % for the values written next to a few points
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    if not data.points:
        ax.text(0.5, 0.5, _("No labelled digits yet"), ha="center", va="center", transform=ax.transAxes,
                fontsize=_LABEL_PT, **text)
        return
    # x: labelled digits so far. People label in bursts, so a clock axis would squeeze most of the
    # curve into a few pixels; the dates of the first and last point go in the axis label instead.
    counts = np.cumsum([p.count for p in data.points])
    few = len(data.points) <= _FEW_POINTS
    given = [p.accuracy for p in data.points]
    base = [p.base_accuracy for p in data.points]
    # The base model as hollow squares under the answers given: equal values stay visible as both.
    ax.plot(counts, base, marker="s", ms=11 if few else 5, mfc="none", mew=1.8, lw=1.8, ls="--",
            color="tab:orange", label=_("base model"), zorder=2)
    ax.plot(counts, given, marker="o", ms=8 if few else 4, lw=2.5, color="tab:blue", label=_("answers given"),
            zorder=3)
    if few:  # a handful of points: say each value, the curve alone says little yet
        for x, y in zip(counts, given, strict=True):
            ax.annotate(f"{y:.0%}", (float(x), y), xytext=(0, 9), textcoords="offset points", ha="center",
                        va="bottom", fontsize=_TICK_PT, color="tab:blue", zorder=4)
    ends = [p.at for p in data.points]
    for when, version in data.promotions:
        x = float(counts[bisect.bisect_right(ends, when) - 1]) if when >= ends[0] else 0.0
        ax.axvline(x, color="tab:green", alpha=0.7, lw=1.5)
        ax.annotate(_("personal v{version}", version=version), (x, 0.03), rotation=90,
                    fontsize=MIN_FONT_PT, color="tab:green", ha="right", va="bottom", **text)
    ax.set_xlim(0, max(int(counts[-1]), 10) * 1.06)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=6))
    first, last = f"{ends[0]:%Y-%m-%d}", f"{ends[-1]:%Y-%m-%d}"
    ax.set_xlabel(_("labelled digits ({dates})", dates=first if first == last else f"{first} – {last}"),
                  fontsize=_LABEL_PT, **text)
    ax.legend(loc="lower right", prop={"size": MIN_FONT_PT, "family": text.get("fontfamily", "sans-serif")})


def colour_scale(peak: int) -> tuple[matplotlib.colors.Colormap, matplotlib.colors.Normalize, list[int]]:
    """The matrix's colour map, norm and colour-bar ticks: whole numbers only. Up to _DISCRETE_PEAK one
    band per count (0, 1, 2, ...), so two cells of the same count have the same colour; above, a
    continuous scale with a few whole-number ticks."""
    peak = max(int(peak), 1)
    blues = matplotlib.colormaps["Blues"]
    if peak <= _DISCRETE_PEAK:
        cmap = blues.resampled(peak + 1)
        norm = matplotlib.colors.BoundaryNorm(np.arange(-0.5, peak + 1.5), cmap.N)
        step = 1 if peak <= 6 else 2
        return cmap, norm, list(range(0, peak + 1, step))
    ticks = [int(t) for t in matplotlib.ticker.MaxNLocator(nbins=5, integer=True).tick_values(0, peak)
             if 0 <= t <= peak]
    return blues, matplotlib.colors.Normalize(vmin=0, vmax=peak), ticks


def _plot_confusion(fig: Figure, ax: Axes, data: ChartData, _: Translator, text: dict[str, Any]) -> None:
    matrix = np.zeros((10, 10), dtype=int)
    if len(data.confusion):
        matrix[:] = np.asarray(data.confusion, dtype=int)
    ax.set_title(_("What you wrote vs what I answered"), fontsize=_TITLE_PT, **text)
    peak = int(matrix.max())
    cmap, norm, ticks = colour_scale(peak)
    image = ax.imshow(matrix, cmap=cmap, norm=norm)
    ax.set_xlabel(_("answered"), fontsize=_LABEL_PT, **text)
    ax.set_ylabel(_("you wrote"), fontsize=_LABEL_PT, **text)
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    # Cell borders: with only a few labels most cells are empty, and the grid keeps rows and columns apart.
    ax.set_xticks(np.arange(-0.5, 10), minor=True)
    ax.set_yticks(np.arange(-0.5, 10), minor=True)
    ax.grid(which="minor", color="#d0d7de", lw=0.8)
    ax.tick_params(which="minor", length=0)
    for row, col in zip(*np.nonzero(matrix), strict=True):
        color = "white" if matrix[row, col] > max(peak, 1) / 2 else ("black" if row == col else "tab:red")
        ax.text(col, row, str(matrix[row, col]), ha="center", va="center", fontsize=_CELL_PT, color=color,
                fontweight="bold")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, ticks=ticks)
    bar.ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%d"))
    bar.ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    bar.set_label(_("digits"), fontsize=_LABEL_PT, **text)
