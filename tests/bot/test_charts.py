from __future__ import annotations

import io
import warnings
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from matplotlib.lines import Line2D
from matplotlib.text import Text
from PIL import Image

from bot.charts import (
    DPI,
    MIN_FONT_PT,
    AccuracyPoint,
    ChartData,
    _cjk_font,
    build_stats_figure,
    colour_scale,
    render_stats_chart,
)
from bot.i18n import translator

START = datetime(2026, 11, 1, tzinfo=UTC)
SIZE = (1024, 1280)  # portrait, within the 1280 px Telegram keeps of a photo's long side


def _data(points: int = 12) -> ChartData:
    confusion = np.diag(np.arange(1, 11)).tolist()
    confusion[4][9] = 3
    return ChartData(
        points=[AccuracyPoint(START + timedelta(hours=i), 20, 0.6 + i * 0.03, 0.6) for i in range(points)],
        promotions=[(START + timedelta(hours=5, minutes=30), 1)],
        confusion=confusion,
    )


def _one_label(answered: int = 3) -> ChartData:
    """The first /stats after a single labelled digit (a 3, answered `answered`)."""
    confusion = [[0] * 10 for _ in range(10)]
    confusion[3][answered] = 1
    right = 1.0 if answered == 3 else 0.0
    return ChartData(points=[AccuracyPoint(START, 1, right, right)], promotions=[], confusion=confusion)


def _colour_bar_ticks(data: ChartData) -> list[float]:
    figure = build_stats_figure(data, translator("en"))
    figure.canvas.draw()
    bar = figure.axes[-1]  # the colour bar's own axes, added last
    return [float(t) for t in bar.get_yticks()]


def _panel_split(data: ChartData) -> int:
    """The pixel row between the accuracy panel (above) and the matrix (below)."""
    figure = build_stats_figure(data, translator("en"))
    figure.canvas.draw()
    top, matrix = figure.axes[0], figure.axes[1]
    height = figure.bbox.height
    above = height - top.get_window_extent().y0  # the frames; image rows count from the top
    below = height - matrix.get_window_extent().y1
    assert above < below
    return int((above + below) / 2)


def _points(text: Text) -> float:
    size = text.get_fontsize()
    assert isinstance(size, int | float), size  # matplotlib resolves "medium" etc. to points
    return float(size)


def _image(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_chart_is_a_png_with_content() -> None:
    png = render_stats_chart(_data(), translator("en"))
    assert png.startswith(b"\x89PNG")
    image = _image(png)
    assert image.size == SIZE
    pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 20  # not a blank canvas


def test_chart_marks_the_promotion() -> None:
    with_promotion = np.asarray(_image(render_stats_chart(_data(), translator("en"))).convert("RGB"), dtype=int)
    data = _data()
    without = np.asarray(_image(render_stats_chart(
        ChartData(data.points, [], data.confusion), translator("en"))).convert("RGB"), dtype=int)
    difference = np.abs(with_promotion - without).sum(axis=2) > 0
    split = _panel_split(data)
    assert difference[:split].sum() > 100  # the marker line and its label, in the accuracy panel (top)
    assert difference[split:].sum() == 0  # the confusion panel (below) is unchanged


def test_chinese_labels_use_a_cjk_font_when_one_is_installed() -> None:
    """CI installs fonts-wqy-microhei (scripts/services.sh): no glyph may be missing from the chart."""
    if _cjk_font() is None:
        pytest.skip("no CJK font installed here (scripts/services.sh installs fonts-wqy-microhei)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chinese = render_stats_chart(_data(), translator("zh_CN"))
    assert not [w for w in caught if "missing from font" in str(w.message)]
    assert chinese != render_stats_chart(_data(), translator("en"))  # the labels really are Chinese


def test_chart_renders_for_chinese_and_for_no_data() -> None:
    assert _image(render_stats_chart(_data(), translator("zh_CN"))).size == SIZE
    empty = ChartData(points=[], promotions=[], confusion=[[0] * 10 for _ in range(10)])
    assert _image(render_stats_chart(empty, translator("en"))).size == SIZE


@pytest.mark.parametrize("peak", [0, 1, 2, 3, 5, 7, 12, 13, 57, 250, 4321])
def test_the_colour_scale_has_whole_number_ticks_only(peak: int) -> None:
    _cmap, norm, ticks = colour_scale(peak)
    assert ticks[0] == 0 and all(isinstance(t, int) for t in ticks)
    assert ticks == sorted(set(ticks)) and ticks[-1] <= max(peak, 1) and 2 <= len(ticks) <= 8
    assert norm.vmin is not None and norm.vmax is not None and norm.vmin <= 0 and norm.vmax >= max(peak, 1) - 0.5
    if peak <= 12:  # one band per count: a 1 and a 2 never share a colour
        colours = [tuple(_cmap(norm(n))) for n in range(max(peak, 1) + 1)]
        assert len(set(colours)) == len(colours)


@pytest.mark.parametrize("peak", [1, 4, 30])
def test_the_drawn_colour_bar_shows_whole_numbers(peak: int) -> None:
    data = _data()
    confusion = [[0] * 10 for _ in range(10)]
    confusion[2][2] = peak
    ticks = _colour_bar_ticks(ChartData(data.points, [], confusion))
    assert ticks and all(t == int(t) for t in ticks) and 0 in ticks
    if peak <= 4:
        assert ticks == list(range(peak + 1))  # every count up to the largest is labelled
    figure = build_stats_figure(ChartData(data.points, [], confusion), translator("en"))
    figure.canvas.draw()
    labels = [label.get_text() for label in figure.axes[-1].get_yticklabels() if label.get_text()]
    assert labels and all(label.isdigit() for label in labels)  # "1", never "1.0" or "0.25"


def test_one_label_gives_a_readable_chart() -> None:
    data = _one_label()
    png = render_stats_chart(data, translator("en"))
    image = _image(png)
    assert image.size == SIZE and round(image.info["dpi"][0]) == DPI
    figure = build_stats_figure(data, translator("en"))
    figure.canvas.draw()
    lines = [line for line in figure.axes[0].get_lines() if line.get_label() == "answers given"]
    assert len(lines) == 1 and lines[0].get_markersize() >= 8  # a lone point is a visible dot, not a speck
    written = [t.get_text() for t in figure.axes[0].texts]
    assert "100%" in written  # the value of each of the few points is written next to it
    assert _colour_bar_ticks(data) == [0.0, 1.0]
    cell = [t for t in figure.axes[1].texts if t.get_text() == "1"]
    assert len(cell) == 1 and _points(cell[0]) >= 12


def test_a_wrong_first_answer_is_drawn_too() -> None:
    image = np.asarray(_image(render_stats_chart(_one_label(answered=8), translator("en"))).convert("RGB"))
    assert image.std() > 20
    figure = build_stats_figure(_one_label(answered=8), translator("en"))
    assert "0%" in [t.get_text() for t in figure.axes[0].texts]


def test_every_text_is_large_enough_for_a_phone() -> None:
    """Shown about 400 CSS px wide in a chat, an 11 pt text at 160 dpi on a 1024 px image is ~9.5 px tall."""
    for language in ("en", "zh_CN"):
        figure = build_stats_figure(_data(), translator(language))
        figure.canvas.draw()
        texts = [t for t in figure.findobj(Text) if t.get_text().strip() and t.get_visible()]
        assert len(texts) > 40
        small = sorted({(t.get_text(), _points(t)) for t in texts if _points(t) < MIN_FONT_PT})
        assert not small, small
        width_px = figure.get_figwidth() * DPI
        assert width_px == SIZE[0] and MIN_FONT_PT * DPI / 72 / width_px * 400 >= 9
    many = build_stats_figure(_data(), translator("en"))
    answers = next(line for line in many.axes[0].get_lines() if line.get_label() == "answers given")
    assert isinstance(answers, Line2D) and answers.get_markersize() < 8  # 12 points: a curve, no labels
    assert not [t for t in many.axes[0].texts if t.get_text().endswith("%")]
