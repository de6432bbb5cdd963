"""Preprocessing (installed as ``fpnunet.preprocessing``): normalisation, depth reduction, storage.

``preprocess.preprocess_volume`` turns raw channels ``(B, D, A)`` into the network input
``(C, B, depth, A)`` (also used by inference); ``storage.preprocess_dataset`` writes a dataset's
training cases into ``$FPN_PREPROCESSED/DatasetXXX/<data_identifier>/`` (see docs/layout.md).

The package imports nothing: import a name from the module that defines it.
"""
