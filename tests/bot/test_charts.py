from __future__ import annotations

import io
import warnings
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from bot.charts import AccuracyPoint, ChartData, _cjk_font, render_stats_chart
from bot.i18n import translator

START = datetime(2026, 11, 1, tzinfo=UTC)


def _data(points: int = 12) -> ChartData:
    confusion = np.diag(np.arange(1, 11)).tolist()
    confusion[4][9] = 3
    return ChartData(
        points=[AccuracyPoint(START + timedelta(hours=i), 20, 0.6 + i * 0.03, 0.6) for i in range(points)],
        promotions=[(START + timedelta(hours=5, minutes=30), 1)],
        confusion=confusion,
    )


def _image(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_chart_is_a_png_with_content() -> None:
    png = render_stats_chart(_data(), translator("en"))
    assert png.startswith(b"\x89PNG")
    image = _image(png)
    assert image.size == (1100, 440)
    pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 20  # not a blank canvas


def test_chart_marks_the_promotion() -> None:
    with_promotion = np.asarray(_image(render_stats_chart(_data(), translator("en"))).convert("RGB"), dtype=int)
    data = _data()
    without = np.asarray(_image(render_stats_chart(
        ChartData(data.points, [], data.confusion), translator("en"))).convert("RGB"), dtype=int)
    difference = np.abs(with_promotion - without).sum(axis=2) > 0
    assert difference[:, :600].sum() > 100  # the marker line and its label, in the accuracy panel
    assert difference[:, 700:].sum() == 0  # the confusion panel is unchanged


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
    assert _image(render_stats_chart(_data(), translator("zh_CN"))).size == (1100, 440)
    empty = ChartData(points=[], promotions=[], confusion=[[0] * 10 for _ in range(10)])
    assert _image(render_stats_chart(empty, translator("en"))).size == (1100, 440)
