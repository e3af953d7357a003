"""A small learned ink finder: which pixels of a photo are pen, pencil or marker, not paper.

The hand-made looks (core.vision.segment, core.vision.plain_ink) threshold a contrast map, so a thin ballpoint
stroke beside a shadow or on ruled paper either falls under the threshold or drags the paper in. This
network learns the difference from simulated photos whose true ink the simulator knows
(core.sim.photo_sim, `truth=True`; trained by core.vision.train_ink). It sees the working grey image (dark ink
on light paper; light-on-dark photos are inverted first) and the plain look's relative ink map, and
gives an ink probability per pixel at the same size. A small encoder-decoder at half and quarter
resolution: dilated convolutions give it about 60 px of context (a stroke against the paper around
it) at a cost a CPU can bear on the photos the other looks are unsure of.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.vision.grouping import quantile
from core.vision.plain_ink import dark_ink, pad_margin, plain_ink_map, row_of_digits, without_long_lines
from core.vision.segment import Segmentation

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "ink.pt"  # core/weights/ink.pt


@dataclass(frozen=True)
class InkNetConfig:
    half: int = 12
    quarter: int = 16


class InkNet(nn.Module):
    def __init__(self, config: InkNetConfig = InkNetConfig()) -> None:
        super().__init__()
        self.config = config
        h, q = config.half, config.quarter
        # Nothing runs at full resolution (small convolutions there cost most of the time on a CPU):
        # each 2x2 block of input pixels is one position of 8 channels, and each output position
        # gives the ink of its 2x2 block back (pixel shuffle).
        self.half1 = nn.Conv2d(8, h, 3, padding=1)
        self.half2 = nn.Conv2d(h, h, 3, padding=2, dilation=2)
        self.down = nn.Conv2d(h, q, 3, stride=2, padding=1)
        self.quarter1 = nn.Conv2d(q, q, 3, padding=2, dilation=2)
        self.quarter2 = nn.Conv2d(q, q, 3, padding=4, dilation=4)
        self.merge = nn.Conv2d(q + h, h, 1)
        self.refine = nn.Conv2d(h, h, 3, padding=1)
        self.out = nn.Conv2d(h, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W) inputs (see inputs()) -> (N, 1, H, W) ink logits."""
        height, width = x.shape[-2:]
        x = F.pad(x, (0, width % 2, 0, height % 2), mode="replicate")
        half = F.relu(self.half2(F.relu(self.half1(F.pixel_unshuffle(x, 2)))))
        quarter = F.relu(self.quarter2(F.relu(self.quarter1(F.relu(self.down(half))))))
        up = F.interpolate(quarter, size=half.shape[-2:], mode="bilinear", align_corners=False)
        half = F.relu(self.refine(F.relu(self.merge(torch.cat([up, half], 1)))))
        return F.pixel_shuffle(self.out(half), 2)[..., :height, :width]


def inputs(gray: np.ndarray) -> np.ndarray:
    """The network's two input planes (2, H, W) float32 for a grey image of dark ink on light paper:
    the image relative to its paper's brightness, and the plain look's relative ink map."""
    paper = max(quantile(gray[::2, ::2], 0.9), 1.0)
    return np.stack([gray.astype(np.float32) / paper - 0.5,
                     plain_ink_map(gray).astype(np.float32) / 255]).astype(np.float32)


def save(model: InkNet, path: Path, metrics: dict[str, float]) -> None:
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict(), "metrics": metrics}, path)


class InkFinder:
    """The trained network, ready for inference on one thread (loaded once, shared)."""

    def __init__(self, path: Path = WEIGHTS) -> None:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        self.model = InkNet(InkNetConfig(**checkpoint["config"]))
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.eval()
        self.metrics: dict[str, float] = dict(checkpoint.get("metrics", {}))

    @torch.inference_mode()
    def probability(self, gray: np.ndarray) -> np.ndarray:
        """Ink probability per pixel (uint8 0..255, the size of `gray`; dark ink on light paper)."""
        x = torch.from_numpy(inputs(gray))[None]
        probability = torch.sigmoid(self.model(x))[0, 0].numpy()
        return np.round(probability * 255).astype(np.uint8)


_FINDER: list[InkFinder] = []


def ink_finder() -> InkFinder | None:
    """The shipped network (None when its weights are missing: the learned look is then skipped)."""
    if not _FINDER and WEIGHTS.exists():
        _FINDER.append(InkFinder(WEIGHTS))
    return _FINDER[0] if _FINDER else None


# Ink probability (of 255) that makes a pixel sure ink, and that joins a pixel to sure ink it touches
# (hysteresis: the network is least sure where a thin stroke crosses a pixel boundary, which would
# break a digit into pieces).
INK_PROBABILITY = 128
JOIN_PROBABILITY = 64
JOIN_STEPS = 3


def learned_mask(ink: np.ndarray) -> np.ndarray:
    """The network's ink map as a mask (uint8 0/255): sure ink, grown a few pixels through likely ink."""
    kept: np.ndarray = ((ink >= INK_PROBABILITY) * 255).astype(np.uint8)
    weak = ((ink >= JOIN_PROBABILITY) * 255).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(JOIN_STEPS):
        kept = cv2.bitwise_and(cv2.dilate(kept, kernel), weak)
    return kept


# Straight lines at least this share of the photo's long side that run into its frame are paper
# lines, grids, shadow and paper edges (the network, trained on few of them, can take them for ink); a
# written 1 that long stops short of the frame. They are taken out of the mask before it is cut into
# pieces, whose bits between two grid lines would pass for 1s.
STRAIGHT_SHARE = 0.3


def without_straight_lines(mask: np.ndarray) -> np.ndarray:
    """The mask less straight lines (any direction) longer than STRAIGHT_SHARE of the long side that
    reach the photo's frame."""
    height, width = mask.shape
    length = max(15, round(STRAIGHT_SHARE * max(height, width)))
    gap = max(6, length // 10)
    lines = cv2.HoughLinesP(mask, 1, np.pi / 180, threshold=length // 2, minLineLength=length, maxLineGap=gap)
    if lines is None:
        return mask
    cleaned = mask.copy()
    for x0, y0, x1, y1 in lines.reshape(-1, 4):
        reach = min(min(x, y, width - 1 - x, height - 1 - y) for x, y in ((x0, y0), (x1, y1)))
        if reach <= gap:
            cv2.line(cleaned, (int(x0), int(y0)), (int(x1), int(y1)), 0, 5)
    return cleaned


def learned_segmentation(gray: np.ndarray, finder: InkFinder, *, pad: bool) -> Segmentation:
    """The digits of the main row in the network's ink map (the same grouping as the plain look).
    `pad` (for scans and crops) pads the map with paper, so that a digit cut by the frame is not
    dropped as a paper edge (solid shapes still are)."""
    gray, inverted = dark_ink(gray)
    ink = finder.probability(gray)
    mask = learned_mask(ink)
    if not pad:  # a scan's or crop's digits may be as tall as the photo
        mask = without_straight_lines(mask)
    mask = without_long_lines(mask)
    margin = pad_margin(gray.shape) if pad else 0
    if margin:
        gray = cv2.copyMakeBorder(gray, margin, margin, margin, margin, cv2.BORDER_REPLICATE)
        ink, mask = (cv2.copyMakeBorder(plane, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=0)
                     for plane in (ink, mask))
    return row_of_digits(gray, ink, mask, inverted=inverted, margin=margin)


def resize_truth(ink: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A photo's true ink (core.sim.photo_sim) brought to the working image's size, as the training
    target: coverage relative to half the pen's full strength, so that a stroke thinner than a
    pixel still counts as ink where it covers most of one."""
    small = cv2.resize(ink, (shape[1], shape[0]), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    strong = ink[ink > 0]
    peak = float(np.percentile(strong, 99)) / 255 if strong.size else 1.0
    return np.clip(small / max(0.5 * peak, 1e-3), 0, 1)
