"""Patients: the traits an eye inherits, and which cases are eyes of the same patient.

Case ``i`` of split ``s`` (train 0, test 1) belongs to a patient drawn from generators seeded
``[seed, 2 + 2 * s, p]`` (size) and ``[seed, 3 + 2 * s, p]`` (traits), so it never changes with ``n``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TRAIN, _TEST = 0, 1  # split index in the generator seeds


@dataclass
class PatientTraits:
    """Traits shared by the eyes of one patient."""

    severity: float  # 0..1: lesion count and size
    thickness: float  # retinal thickness scale
    brightness: float  # overall reflectivity scale
    first_eye_right: bool


def patient_traits(rng: np.random.Generator) -> PatientTraits:
    """Draw the traits one patient's eyes share."""
    return PatientTraits(
        severity=float(rng.beta(1.6, 1.6)),
        thickness=float(rng.uniform(0.88, 1.12)),
        brightness=float(rng.uniform(0.9, 1.1)),
        first_eye_right=bool(rng.random() < 0.5),
    )


def assign_patients(seed: int, n: int, split: int = _TRAIN) -> list[tuple[int, int]]:
    """``(patient index, eye index)`` of cases ``0..n-1``: patients hold one or two eyes.

    Patient ``p``'s size comes from its own generator, so the mapping of early cases does not
    depend on ``n``.
    """
    out: list[tuple[int, int]] = []
    p = 0
    while len(out) < n:
        size = 2 if np.random.default_rng([seed, 2 + 2 * split, p]).random() < 0.6 else 1
        out.extend((p, e) for e in range(size))
        p += 1
    return out[:n]


def _traits_for(seed: int, split: int, patient: int) -> PatientTraits:
    return patient_traits(np.random.default_rng([seed, 3 + 2 * split, patient]))
