"""Preprocessing (installed as ``fpnunet.preprocessing``): normalisation, depth reduction, storage.

``preprocess_volume`` turns raw channels ``(B, D, A)`` into the network input
``(C, B, depth, A)`` (also used by inference); ``preprocess_dataset`` writes a dataset's
training cases into ``$FPN_PREPROCESSED/DatasetXXX/<data_identifier>/`` (see docs/layout.md).
"""
from fpnunet.preprocessing.preprocess import load_case_raw, preprocess_volume
from fpnunet.preprocessing.storage import preprocess_case, preprocess_dataset

__all__ = ["load_case_raw", "preprocess_case", "preprocess_dataset", "preprocess_volume"]
