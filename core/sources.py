"""Which model answered a digit (``DigitPrediction.source``, the ``predictions.source`` column)."""

BASE, PERSONAL = "base", "personal"
