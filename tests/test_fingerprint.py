"""Fingerprint values of a verified dataset."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from raw_dataset import BAND, SHAPE, SPACING, make_raw_dataset, make_volume

from fpnunet.io import write_image
from fpnunet.plans.fingerprint import verify_and_fingerprint


# ----------------------------------------------------------------------------- fingerprint values
def test_fingerprint_values(tmp_path: Path):
    ds = make_raw_dataset(tmp_path, n=3, labelled=(0, 1), axis=0, num_test=2)
    # one larger case: median shape must be the middle one
    write_image(ds / "imagesTr" / "case_002_0000.nii.gz", make_volume((6, 48, 16), axis=0),
                (SPACING[1], 0.2, SPACING[2]))
    fp = verify_and_fingerprint(ds, show_progress=False)
    expected_keys = {
        "dataset_name", "projection_axis", "num_channels", "labels", "enface_modalities", "file_ending",
        "num_cases", "num_labelled", "num_unlabelled", "num_test", "cases", "median_shape", "median_spacing",
        "retina_band_height_p95", "retina_band_height_max", "intensity", "foreground_fraction_mean",
    }
    assert set(fp) == expected_keys
    assert fp["dataset_name"] == "Dataset901_Tiny"
    assert fp["projection_axis"] == 0
    assert (fp["num_cases"], fp["num_labelled"], fp["num_unlabelled"], fp["num_test"]) == (3, 2, 1, 2)
    assert fp["num_channels"] == 1 and fp["labels"] == {"background": 0, "GA": 1}
    assert fp["enface_modalities"] == ["FAF"] and fp["file_ending"] == ".nii.gz"
    c0 = fp["cases"]["case_000"]
    assert set(c0) == {"shape", "spacing", "retina_band", "labelled", "enface", "label_classes",
                       "foreground_fraction", "intensity"}
    assert c0["shape"] == list(SHAPE)
    assert c0["spacing"] == pytest.approx(list(SPACING), rel=1e-5)  # moved to (sB, sD, sA)
    top, bottom = c0["retina_band"]
    assert abs(top - BAND[0]) <= 1 and abs(bottom - BAND[1]) <= 1
    assert c0["labelled"] and c0["label_classes"] == [0, 1] and c0["enface"] == ["FAF"]
    assert c0["foreground_fraction"] == pytest.approx(16 / 64)
    assert set(c0["intensity"]) == {"p00_5", "p99_5", "mean", "std"}
    assert 80 < c0["intensity"]["mean"] < 115  # retina ~110, band edges may add a background row
    c2 = fp["cases"]["case_002"]
    assert c2["shape"] == [6, 48, 16] and not c2["labelled"] and c2["foreground_fraction"] is None
    assert c2["spacing"][0] == pytest.approx(0.2)
    assert fp["median_shape"] == list(SHAPE)
    assert fp["median_spacing"] == pytest.approx(list(SPACING), rel=1e-5)
    assert fp["retina_band_height_max"] >= fp["retina_band_height_p95"] >= 10
    assert fp["foreground_fraction_mean"] == pytest.approx(0.25)
    assert fp["intensity"]["p00_5"] < fp["intensity"]["mean"] < fp["intensity"]["p99_5"]
    json.dumps(fp)  # serialisable as is


def test_fingerprint_parallel_matches_serial(tmp_path: Path):
    ds = make_raw_dataset(tmp_path, n=4, labelled=(0, 1, 2))
    a = verify_and_fingerprint(ds, num_processes=1, show_progress=False)
    b = verify_and_fingerprint(ds, num_processes=2, show_progress=False)
    assert a == b


def test_summary_says_when_no_labelled_case_is_lesion_free(tmp_path: Path):
    import numpy as np

    from fpnunet.io import read_image
    from fpnunet.plans.fingerprint import fingerprint_summary

    ds = make_raw_dataset(tmp_path, n=3, labelled=(0, 1))
    text = fingerprint_summary(verify_and_fingerprint(ds, show_progress=False))
    assert "lesion-free labelled cases: 0 of 2 (none: in fpn_find_best_configuration the cross-validation never" in text
    label = ds / "labelsTr" / "case_001.nii.gz"
    image = read_image(label)
    write_image(label, np.zeros_like(image.array), tuple(image.spacing))
    text = fingerprint_summary(verify_and_fingerprint(ds, show_progress=False))
    assert "lesion-free labelled cases: 1 of 2\n" in text + "\n" and "(none:" not in text
