"""Recognition: the base model plus an optional personal model, batched, with per-digit provenance.

Both models share the frozen trunk (conv1/conv2 are never fine-tuned), so the trunk runs once per
batch and only the heads run twice. The personal answer is used when its temperature-scaled
confidence clears the personal model's threshold; otherwise the base model answers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from core.model.network import Checkpoint, DigitNet, for_inference, head_state, merge_state, normalize
from core.personal.memory import PersonalMemory
from core.sources import BASE, PERSONAL
from core.vision.touching import cut, piece_counts

if TYPE_CHECKING:
    from core.vision.preprocess import Candidate, DigitCrop, Preprocessed

log = logging.getLogger(__name__)
DEFAULT_PERSONAL_THRESHOLD = 0.9
# On a photo that is not a tight crop, core.vision.segment's reading (made for phone photos of a page)
# is kept unless another look's is surer by more than this (chosen on simulated photos: 0.05 kept
# their rows at 91% where no bonus dropped them to 86%, and singles at 98%).
SEGMENT_BONUS = 0.05
# core.vision.segment's reading is checked against the other looks also when it leaves more than this
# share of the clear ink unread (a sure "1" out of a whole amount).
MAX_UNREAD_INK = 0.5
# What leaving all the ink the other looks read unread costs a reading (see choose_candidate);
# chosen on simulated rows (0 -> 90.0%, 0.25-0.5 -> 90.7%; thin-pen rows 34% either way).
MISSED_INK_COST = 0.5
# The log-confidence a cut must buy (see split_score). Chosen on synthetic scans of touching MNIST
# test digits (pairs read: 0 -> 84%, 0.1 -> 81%, no cuts 73%; singles 97% throughout) and simulated
# rows (no cuts 91.3%, 0.1 -> 90.0%): real cheque amounts touch far more often than simulated rows.
SPLIT_PENALTY = 0.1
# The learned look (core.vision.ink_net) reads thin pens the others miss, but on photos they read well it
# is less often right than its confidence says; it must be surer than them by this much.
LEARNED_PENALTY = 0.15
# It costs more than the other looks (10-20 ms on one core), so it only looks at photos whose best
# reading so far scores under this. It can only win below 1 - LEARNED_PENALTY, but its ink also
# shows what the others left unread (ink_shares).
LEARNED_LOOK_BELOW = 0.95
# ... or whose core.vision.segment look left more than this share of the clear ink unread: a sure reading of
# part of a row. Simulated tuning photos (seeds 31/32, of 150): thin-pen rows 79 -> 85, classic singles
# 144 -> 143; 0.05: 87 rows, 143/134 classic; every photo: 90 rows, 142/134 classic. On real-dev it runs
# on most photos all the same (cheque patterns): p50 +12 ms on the loaded 2-core VM.
LEARNED_UNREAD = 0.3


@dataclass(frozen=True)
class DigitPrediction:
    digit: int
    confidence: float
    source: str  # BASE or PERSONAL
    base_digit: int
    base_confidence: float
    probabilities: list[float]

    def runner_up(self) -> int:
        """The second most likely digit under the answering model (for "4 or 9?" replies)."""
        order = np.argsort(self.probabilities)[::-1]
        return int(order[1])


@dataclass
class PhotoReading:
    status: str
    predictions: list[DigitPrediction] = field(default_factory=list)
    crops: list[DigitCrop] = field(default_factory=list)
    preprocessed: Preprocessed | None = None

    @property
    def text(self) -> str:
        return "".join(str(p.digit) for p in self.predictions)


class PersonalModel:
    """What a user has taught the bot: a fine-tuned head with its calibration (merged with the base
    weights on first use) and/or the memory of their labelled digits (core.personal.memory). Either may be
    absent: before the first fine-tune a user has only the memory."""

    def __init__(self, checkpoint: Checkpoint | None, *, version: int | None = None,
                 memory: PersonalMemory | None = None) -> None:
        self.checkpoint = checkpoint
        self.version = version
        # a memory-only file (digitbot finetune with too few labels) has no head weights
        self.has_head = checkpoint is not None and bool(head_state(checkpoint.state_dict))
        if memory is None and checkpoint is not None and checkpoint.memory is not None:
            memory = PersonalMemory.from_dict(checkpoint.memory)
        self.memory = memory
        meta = checkpoint.meta if checkpoint is not None else {}
        self.temperature = float(meta.get("temperature", 1.0))
        self.threshold = float(meta.get("threshold", DEFAULT_PERSONAL_THRESHOLD))
        self._model: DigitNet | None = None
        self.memory_scales: dict[int, float] = {}  # per recognizer: the memory's calibrated strength

    @classmethod
    def from_bytes(cls, blob: bytes, *, version: int | None = None,
                   memory: PersonalMemory | None = None) -> PersonalModel:
        return cls(Checkpoint.from_bytes(blob), version=version, memory=memory)

    def model(self, base: Checkpoint, device: torch.device) -> DigitNet:
        assert self.checkpoint is not None and self.has_head, "a memory-only personal model has no head"
        if self._model is None:
            model = DigitNet(base.config)
            model.load_state_dict(merge_state(base, self.checkpoint))
            self._model = for_inference(model).to(device)
        return self._model


@dataclass(frozen=True)
class _Probe:
    """MNIST digits with the base's trunk and penultimate features and calibrated probabilities."""

    trunk: torch.Tensor
    features: torch.Tensor
    base_probs: np.ndarray
    labels: np.ndarray
    base_accuracy: float


class Recognizer:
    def __init__(self, base: Checkpoint, *, device: str = "cpu", base_temperature: float | None = None,
                 torch_threads: int | None = None,
                 mnist_probe: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """``torch_threads`` sets torch's (process-wide) intra-op threads: a bot classifies many small
        batches from several threads at once, and nested OpenMP pools then oversubscribe the cores
        (measured: p50 100 ms with 2 torch threads vs 18 ms with 1 on the 2-core machine).
        ``mnist_probe``: (uint8 images, labels) a personal memory is calibrated on (default: 2,000
        MNIST test digits, read when a memory is first used; without MNIST memories are off)."""
        self._probe_samples = mnist_probe
        self._probe: _Probe | None = None
        self._probe_lock = threading.Lock()
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.base = base
        self.device = torch.device(device)
        self.model = for_inference(base.build()).to(self.device)
        self.base_temperature = float(
            base_temperature if base_temperature is not None else base.meta.get("temperature", 1.0))

    @torch.inference_mode()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """The base model's penultimate features (N,D) of uint8 crops (the personal memory's space)."""
        return self.model.penultimate(self._trunk(images))

    def _trunk(self, images: np.ndarray) -> torch.Tensor:
        x = normalize(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))).to(self.device)
        return self.model.trunk(x.contiguous(memory_format=torch.channels_last))

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray, personal: PersonalModel | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Calibrated class probabilities (N,10) of the base, (if given) the personal head, and the
        memory's per-class evidence (N,10) for these digits (None without a memory)."""
        trunk = self._trunk(images)
        features = self.model.penultimate(trunk)
        base = F.softmax(self.model.fc2(features) / self.base_temperature, dim=1)
        own = votes = None
        if personal is not None and personal.has_head:
            head = personal.model(self.base, self.device).head(trunk)
            own = F.softmax(head / personal.temperature, dim=1).cpu().numpy()
        if personal is not None and personal.memory is not None and len(personal.memory):
            remembered = personal.memory.embeddings(id(self.model), self.embed)
            scale = self._memory_scale(personal, remembered)
            votes = scale * personal.memory.evidence(features, remembered).cpu().numpy()
        return base.cpu().numpy(), own, votes

    def _memory_scale(self, personal: PersonalModel, remembered: torch.Tensor) -> float:
        """How strongly this user's memory may vote (core.personal.memory.fit_scale on the MNIST probe, with the
        user's head answering as served), computed once per personal model."""
        key = id(self.model)
        if key not in personal.memory_scales:
            probe, memory = self._mnist_probe(), personal.memory
            if probe is None or memory is None:
                personal.memory_scales[key] = 0.0
            else:
                served = probe.base_probs
                if personal.has_head:
                    head = personal.model(self.base, self.device).head(probe.trunk)
                    own = F.softmax(head / personal.temperature, dim=1).cpu().numpy()
                    served = np.where(own.max(1, keepdims=True) >= personal.threshold, own, served)
                votes = memory.evidence(probe.features, remembered).cpu().numpy()
                personal.memory_scales[key] = memory.fit_scale(served, votes, probe.labels, probe.base_accuracy)
        return personal.memory_scales[key]

    def _mnist_probe(self) -> _Probe | None:
        with self._probe_lock:
            if self._probe is None and self._probe_samples is None:
                from core.model.data import load_mnist
                from core.personal.calibrate import mnist_probe_indices

                try:
                    mnist_images, mnist_labels = load_mnist(train=False)
                except (FileNotFoundError, RuntimeError) as error:
                    log.warning("no MNIST probe to calibrate personal memories with; memories are off: %s", error)
                    self._probe_samples = (np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64))
                else:
                    index = mnist_probe_indices(2000, len(mnist_images))
                    self._probe_samples = (mnist_images[index].numpy(), mnist_labels[index].numpy())
            if self._probe is None and self._probe_samples is not None and len(self._probe_samples[1]):
                images, labels = self._probe_samples
                trunk = self._trunk(images)
                features = self.model.penultimate(trunk)
                probs = F.softmax(self.model.fc2(features) / self.base_temperature, dim=1).cpu().numpy()
                self._probe = _Probe(trunk, features, probs, np.asarray(labels),
                                     float(np.mean(probs.argmax(1) == np.asarray(labels))))
            return self._probe

    def classify(self, images: np.ndarray | Sequence[np.ndarray],
                 personal: PersonalModel | None = None) -> list[DigitPrediction]:
        stacked = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
        if len(stacked) == 0:
            return []
        base, own, votes = self.probabilities(stacked, personal)
        results = []
        for i in range(len(stacked)):
            base_digit = int(base[i].argmax())
            base_conf = float(base[i, base_digit])
            if own is not None and personal is not None and float(own[i].max()) >= personal.threshold:
                probs, source = own[i], PERSONAL
            else:
                probs, source = base[i], BASE
            if votes is not None and personal is not None and personal.memory is not None:
                probs = personal.memory.blend(probs, votes[i])
                source = PERSONAL if int(probs.argmax()) != base_digit else source
            digit = int(probs.argmax())
            results.append(DigitPrediction(
                digit=digit, confidence=float(probs[digit]), source=source, base_digit=base_digit,
                base_confidence=base_conf, probabilities=[round(float(p), 6) for p in probs]))
        return results

    def read(self, data: bytes, personal: PersonalModel | None = None) -> PhotoReading:
        return self.read_many([data], personal)[0]

    def read_many(self, photos: Sequence[bytes], personal: PersonalModel | None = None) -> list[PhotoReading]:
        """Preprocess every photo and classify the digits of its candidate segmentations in one
        batch; each photo's reading is the candidate the classifier is surest of. The plain looks
        run only where they could win: where core.vision.segment's reading is not sure enough already."""
        from core.vision.preprocess import look_again, look_learned, preprocess

        prepared = [preprocess(data) for data in photos]
        scored = self._classify_candidates(prepared, personal)
        unsure = [i for i, pre in enumerate(prepared) if pre.status == "ok" and not pre.looked_again
                  and (reading_score(scored[i][0]) < 1 - SEGMENT_BONUS or pre.unread_ink > MAX_UNREAD_INK)]
        for i in unsure:
            look_again(prepared[i])
        # core.vision.segment's candidate (the first) is classified already; only the new ones are left.
        again = self._classify_candidates([prepared[i] for i in unsure], personal, first=1)
        for i, predictions in zip(unsure, again, strict=True):
            scored[i] = scored[i][:1] + predictions
        readings = []
        for pre, per_candidate in zip(prepared, scored, strict=True):
            if pre.status != "ok":
                readings.append(PhotoReading(status=pre.status, preprocessed=pre))
                continue
            for index, candidate in enumerate(pre.candidates):
                per_candidate[index] = self._split_touching(candidate, per_candidate[index], personal)
            scores = candidate_scores(per_candidate, ink_shares(pre), [c.look for c in pre.candidates],
                                      segment_first=not pre.tight)
            # The learned look is asked where no other reading is sure (see LEARNED_LOOK_BELOW).
            if (max(scores) < LEARNED_LOOK_BELOW or pre.unread_ink > LEARNED_UNREAD) and look_learned(pre):
                learned = self._classify_candidates([pre], personal, first=len(per_candidate))[0][0]
                per_candidate.append(self._split_touching(pre.candidates[-1], learned, personal))
                scores = candidate_scores(per_candidate, ink_shares(pre), [c.look for c in pre.candidates],
                                          segment_first=not pre.tight)
            pre.choose(int(np.argmax(scores)))
            readings.append(PhotoReading(status="ok", predictions=per_candidate[pre.chosen],
                                         crops=list(pre.digits), preprocessed=pre))
        return readings

    def _split_touching(self, candidate: Candidate, predictions: list[DigitPrediction],
                        personal: PersonalModel | None) -> list[DigitPrediction]:
        """Cut the candidate's wide regions into the number of digits the classifier reads best
        (core.vision.touching); the candidate's regions and crops follow. Returns its predictions."""
        options = [(index, cut(region, pieces)) for index, region in enumerate(candidate.regions)
                   for pieces in piece_counts(region)[1:]]
        options = [(index, pieces) for index, pieces in options if len(pieces) > 1]
        if not options:
            return predictions
        crops = [candidate.crops(pieces) for _, pieces in options]
        piece_predictions = self.classify([c.image for group in crops for c in group], personal)
        best = {i: (split_score(predictions[i:i + 1], 1), [candidate.regions[i]], candidate.digits[i:i + 1],
                    predictions[i:i + 1]) for i in range(len(candidate.regions))}
        cursor = 0
        for (index, pieces), group in zip(options, crops, strict=True):
            found = piece_predictions[cursor:cursor + len(group)]
            cursor += len(group)
            score = split_score(found, len(pieces))
            if score > best[index][0]:
                best[index] = (score, pieces, group, found)
        ordered = [best[i] for i in range(len(candidate.regions))]
        candidate.regions = [r for option in ordered for r in option[1]]
        candidate.digits = [c for option in ordered for c in option[2]]
        return [p for option in ordered for p in option[3]]

    def _classify_candidates(self, prepared: Sequence[Preprocessed], personal: PersonalModel | None,
                             first: int = 0) -> list[list[list[DigitPrediction]]]:
        """Per photo, per candidate from `first` on: the predictions for its digits (all classified
        in one batch)."""
        crops = [crop.image for pre in prepared for candidate in pre.candidates[first:] for crop in candidate.digits]
        predictions = self.classify(crops, personal) if crops else []
        result, cursor = [], 0
        for pre in prepared:
            per_candidate = []
            for candidate in pre.candidates[first:]:
                per_candidate.append(predictions[cursor:cursor + len(candidate.digits)])
                cursor += len(candidate.digits)
            result.append(per_candidate)
        return result


def split_score(predictions: Sequence[DigitPrediction], pieces: int) -> float:
    """How well a region cut into `pieces` reads: the mean log confidence of the pieces, less
    SPLIT_PENALTY for each cut (halves of a "0" can each pass for a "1")."""
    confidences = np.maximum([p.confidence for p in predictions], 1e-6)
    return float(np.mean(np.log(confidences))) - SPLIT_PENALTY * (pieces - 1)


def reading_score(predictions: Sequence[DigitPrediction]) -> float:
    """How sure the classifier is of a whole reading: the geometric mean of its digits' confidences
    (a segmentation that cut a digit in two, or took a paper line for a 1, scores low)."""
    if not predictions:
        return 0.0
    return float(np.exp(np.mean(np.log(np.maximum([p.confidence for p in predictions], 1e-6)))))


def ink_shares(pre: Preprocessed) -> list[float]:
    """Per candidate, the share of the ink the looks kept as digits that it reads: a reading of one
    sure "1" out of a row of five digits covers little of it. On a larger photo than a scan or crop
    the padded look does not add to that ink (what it adds beyond the others is then more often the
    desk or a shadow at the frame than a digit cut by it)."""
    if len(pre.candidates) < 2:
        return [1.0] * len(pre.candidates)
    masks = [c.binary > 0 for c in pre.candidates]
    unpadded = [m for m, c in zip(masks, pre.candidates, strict=True) if pre.small or c.look != "plain-padded"]
    union = np.logical_or.reduce(unpadded or masks)
    total = max(int(union.sum()), 1)
    return [int((m & union).sum()) / total for m in masks]


def choose_candidate(candidates: Sequence[Sequence[DigitPrediction]], ink_share: Sequence[float],
                     looks: Sequence[str], *, segment_first: bool) -> int:
    """The index of the reading to use among a photo's candidate segmentations (candidate_scores)."""
    return int(np.argmax(candidate_scores(candidates, ink_share, looks, segment_first=segment_first)))


def candidate_scores(candidates: Sequence[Sequence[DigitPrediction]], ink_share: Sequence[float],
                     looks: Sequence[str], *, segment_first: bool) -> list[float]:
    """How good each of a photo's candidate readings is: how sure the classifier is of it
    (reading_score), less MISSED_INK_COST for the ink it leaves unread (see SEGMENT_BONUS and
    LEARNED_PENALTY too; `segment_first`: core.vision.segment's reading is favoured)."""
    def bonus(look: str) -> float:
        if look == "segment":
            return SEGMENT_BONUS if segment_first else 0.0
        return -LEARNED_PENALTY if look == "learned" else 0.0

    return [reading_score(c) - MISSED_INK_COST * (1 - share) + bonus(look)
            for c, share, look in zip(candidates, ink_share, looks, strict=True)]
