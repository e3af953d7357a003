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


def render_stats_chart(data: ChartData, _: Translator) -> bytes:
    """A PNG: accuracy over time (answers given vs base model) and the wrote-vs-answered matrix.

    Uses a bare Figure (no pyplot state), so /stats charts can render in several threads at once.
    """
    font = _cjk_font()
    if _.language.startswith("zh") and font is None:
        _ = translator("en")
    text: dict[str, Any] = {"fontfamily": [font, "DejaVu Sans"]} if font else {}
    fig = Figure(figsize=(11, 4.4))
    ax_time, ax_conf = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1]})
    _plot_accuracy(ax_time, data, _, text)
    _plot_confusion(fig, ax_conf, data, _, text)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _plot_accuracy(ax: Axes, data: ChartData, _: Translator, text: dict[str, Any]) -> None:
    ax.set_title(_("Accuracy over time"), **text)
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    if not data.points:
        ax.text(0.5, 0.5, _("No labelled digits yet"), ha="center", va="center", transform=ax.transAxes, **text)
        return
    # x: labelled digits so far. People label in bursts, so a clock axis would squeeze most of the
    # curve into a few pixels; the dates of the first and last point go in the axis label instead.
    counts = np.cumsum([p.count for p in data.points])
    ax.plot(counts, [p.accuracy for p in data.points], marker="o", ms=3, lw=2, label=_("answers given"))
    ax.plot(counts, [p.base_accuracy for p in data.points], marker=".", ms=3, lw=1.5, ls="--",
            label=_("base model"))
    ends = [p.at for p in data.points]
    for when, version in data.promotions:
        x = float(counts[bisect.bisect_right(ends, when) - 1]) if when >= ends[0] else 0.0
        ax.axvline(x, color="tab:green", alpha=0.7, lw=1)
        ax.annotate(_("personal v{version}", version=version), (x, 0.03), rotation=90,
                    fontsize=8, color="tab:green", ha="right", va="bottom", **text)
    ax.set_xlim(0, max(int(counts[-1]), 10) * 1.06)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    first, last = f"{ends[0]:%Y-%m-%d}", f"{ends[-1]:%Y-%m-%d}"
    ax.set_xlabel(_("labelled digits ({dates})", dates=first if first == last else f"{first} – {last}"), **text)
    ax.legend(loc="lower right", prop={"size": 8, "family": text.get("fontfamily", "sans-serif")})


def _plot_confusion(fig: Figure, ax: Axes, data: ChartData, _: Translator, text: dict[str, Any]) -> None:
    matrix = np.zeros((10, 10), dtype=int)
    if len(data.confusion):
        matrix[:] = np.asarray(data.confusion, dtype=int)
    ax.set_title(_("What you wrote vs what I answered"), **text)
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xlabel(_("answered"), **text)
    ax.set_ylabel(_("you wrote"), **text)
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    peak = matrix.max() or 1
    for row, col in zip(*np.nonzero(matrix), strict=True):
        color = "white" if matrix[row, col] > peak / 2 else ("black" if row == col else "tab:red")
        ax.text(col, row, str(matrix[row, col]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
