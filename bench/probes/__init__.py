"""Evaluation probes: what a run measures beyond accuracy (calibration, OOD detection, corruptions)."""
