"""Evaluation probes: what a run measures beyond accuracy (calibration, OOD detection, corruptions).

A suite selects probes under ``evaluate:``; the engine runs them on the training device after
the last epoch and the run record keeps their values under ``evaluation.<probe>.<name>``.
Third-party probes register through the entry-point group ``podbench.probes``.
"""

from __future__ import annotations

from podbench.probes.base import Probe, ProbeContext
from podbench.probes.registry import (
    PROBES,
    ProbeInfo,
    create_probe,
    list_probes,
    probe_info,
    probe_settings,
    register_probe,
)

__all__ = [
    "PROBES",
    "Probe",
    "ProbeContext",
    "ProbeInfo",
    "create_probe",
    "list_probes",
    "probe_info",
    "probe_settings",
    "register_probe",
]
