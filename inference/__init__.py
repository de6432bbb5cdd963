"""Inference: sliding window over the en-face plane, batched flip TTA, fold ensemble, export.

::

    from fpnunet.inference.predictor import Predictor
    predictor = Predictor.from_model_folder(model_dir)        # every fold_* of a model folder
    probs = predictor.predict_preprocessed(volume)            # (C, B, depth, A) -> (K, B, A)
    probs, props = predictor.predict_raw([oct_bda])           # raw (B, D, A) channels -> (K, B, A)

Inference never imports :mod:`fpnunet.training`: a model folder is all it needs.

The package imports nothing: import a name from the module that defines it.
"""
