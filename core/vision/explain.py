"""The --explain figure: what preprocessing saw and what the model answered, like the seed's.

Top row: the decoded photo, the ink mask, the detected boxes. Below, for each digit: the 28x28
input the model got and its probabilities over 0-9. No torch here: the caller passes the
probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from core.vision.preprocess import Preprocessed


def explain_figure(pre: Preprocessed, predictions_probabilities: Sequence[Sequence[float]],
                   path: str | Path) -> Path:
    """Write the figure for one photo to `path` (PNG) and return the path."""
    path = Path(path)
    digits = pre.digits
    columns = max(3, len(digits))
    fig = plt.figure(figsize=(max(9.0, 1.6 * columns), 7.5), layout="constrained")
    grid = fig.add_gridspec(3, columns, height_ratios=[2.2, 1, 1])
    panels = [
        ("photo (decoded)", pre.gray),
        ("ink mask" + (" (inverted photo)" if pre.inverted else ""), pre.binary),
        (f"{len(digits)} digit(s) found ({pre.candidates[pre.chosen].look} look)" if pre.status == "ok"
         else f"status: {pre.status}", pre.gray),
    ]
    span = columns // 3
    for index, (title, image) in enumerate(panels):
        start = index * span
        axis = fig.add_subplot(grid[0, start: start + span if index < 2 else columns])
        axis.set_title(title, fontsize=10)
        axis.axis("off")
        if image is None:
            axis.text(0.5, 0.5, "not an image", ha="center", va="center", transform=axis.transAxes)
            continue
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
        if index == 2:
            for number, crop in enumerate(digits):
                x, y, w, h = crop.box
                axis.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="red", linewidth=1.5))
                axis.text(x, y - 2, str(number + 1), color="red", fontsize=8, va="bottom")
    for number, crop in enumerate(digits):
        axis = fig.add_subplot(grid[1, number])
        axis.imshow(crop.image, cmap="gray", vmin=0, vmax=255)
        axis.set_xticks([])
        axis.set_yticks([])
        probabilities = list(predictions_probabilities[number]) if number < len(predictions_probabilities) else []
        if probabilities:
            best = max(range(len(probabilities)), key=probabilities.__getitem__)
            axis.set_title(f"#{number + 1}: {best} ({probabilities[best]:.0%})", fontsize=9)
            bars = fig.add_subplot(grid[2, number])
            colours = ["tab:red" if d == best else "tab:gray" for d in range(len(probabilities))]
            bars.bar(range(len(probabilities)), probabilities, color=colours)
            bars.set_ylim(0, 1)
            bars.set_xticks(range(len(probabilities)))
            bars.tick_params(labelsize=7)
            if number:
                bars.set_yticklabels([])
        else:
            axis.set_title(f"#{number + 1}", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
