"""Evaluation: Dice, IoU, HD95 (mm), lesion area (mm^2) per case and mean; ``fpn_evaluate``.

:mod:`fpnunet.evaluation.metrics` holds the per-mask metrics, :mod:`fpnunet.evaluation.evaluate`
pairs folders and writes nnU-Net-style ``summary.json`` plus a per-case CSV,
:mod:`fpnunet.evaluation.crossval` builds cross-validation summaries; the ``fpn_evaluate``
command is :mod:`fpnunet.commands.evaluate`.

The package imports nothing: import a name from the module that defines it.
"""
