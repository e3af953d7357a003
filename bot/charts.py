"""/stats charts (matplotlib, Agg): accuracy over time with promotions marked, and a confusion view."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from matplotlib import font_manager

from bot.i18n import Translator, translator

# Fonts with Chinese glyphs, tried in order; without one the chart falls back to English labels.
_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
              "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "AR PL UMing CN")
ROLLING_WINDOW = 20


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


@lru_cache(maxsize=1)
def _cjk_font() -> str | None:
    available = {font.name for font in font_manager.fontManager.ttflist}
    return next((name for name in _CJK_FONTS if name in available), None)


def render_stats_chart(data: ChartData, _: Translator) -> bytes:
    """A PNG: rolling accuracy (answers given vs base model) and the true-vs-answered matrix."""
    font = _cjk_font()
    if _.language.startswith("zh") and font is None:
        _ = translator("en")
    rc = {"font.sans-serif": [font, "DejaVu Sans"]} if font else {}
    with plt.rc_context(rc):
        fig, (ax_time, ax_conf) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.5, 1]})
        try:
            _plot_accuracy(ax_time, data, _)
            _plot_confusion(fig, ax_conf, data, _)
            fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100)
        finally:
            plt.close(fig)
    return buffer.getvalue()


def _plot_accuracy(ax: plt.Axes, data: ChartData, _: Translator) -> None:
    ax.set_title(_("Accuracy over time"))
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    if not data.points:
        ax.text(0.5, 0.5, _("No labelled digits yet"), ha="center", va="center", transform=ax.transAxes)
        return
    times = [p.at for p in data.points]
    ax.plot(times, [p.accuracy for p in data.points], marker="o", ms=3, lw=2, label=_("answers given"))
    ax.plot(times, [p.base_accuracy for p in data.points], marker=".", ms=3, lw=1.5, ls="--",
            label=_("base model"))
    for when, version in data.promotions:
        ax.axvline(when, color="tab:green", alpha=0.7, lw=1)  # type: ignore[arg-type]
        ax.annotate(_("personal v{version}", version=version), (when, 0.03), rotation=90,  # type: ignore[arg-type]
                    fontsize=8, color="tab:green", ha="right", va="bottom")
    locator = matplotlib.dates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(matplotlib.dates.ConciseDateFormatter(locator))
    ax.legend(loc="lower right", fontsize=8)


def _plot_confusion(fig: plt.Figure, ax: plt.Axes, data: ChartData, _: Translator) -> None:
    matrix = np.zeros((10, 10), dtype=int)
    if len(data.confusion):
        matrix[:] = np.asarray(data.confusion, dtype=int)
    ax.set_title(_("What you wrote vs what I answered"))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xlabel(_("answered"))
    ax.set_ylabel(_("you wrote"))
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    peak = matrix.max() or 1
    for row, col in zip(*np.nonzero(matrix), strict=True):
        color = "white" if matrix[row, col] > peak / 2 else ("black" if row == col else "tab:red")
        ax.text(col, row, str(matrix[row, col]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
