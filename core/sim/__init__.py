"""Simulators: photos of handwritten rows, pens and paper, simulated writers as crops and as photos."""
