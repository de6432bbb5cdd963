"""Training: ``fpn_train`` and the pieces self-supervised pretraining reuses.

One idea per module (import them directly; this package imports nothing so that
``fpnunet.training.splits`` stays light):

* :mod:`.loop`: the generic epoch loop (:class:`~.loop.EpochLoop`, :class:`~.loop.LoopSettings`).
* :mod:`.task`: the :class:`~.task.TrainingTask` protocol a task implements.
* :mod:`.optim`: optimizer and schedule factories.
* :mod:`.segmentation`: the segmentation task, whole-volume validation, final validation export.
* :mod:`.losses`: (soft Dice + BCE) / 2 or Dice + CE, masked.
* :mod:`.checkpoint`: the training state of a checkpoint (the format itself is
  :mod:`fpnunet.checkpoint`, shared with inference).
* :mod:`.hyperparameters`: flags over the plan, resolved once, validated before any folder is touched.
* :mod:`.logger`: ``training_log.csv`` and ``progress.png``.
* :mod:`.pretrained`: loading pretrained weights by name and shape; finding the pretraining run.
* :mod:`.run_folder`: resume / overwrite policy, ``command.txt`` (names and the fold lock:
  :mod:`fpnunet.results_layout`).
* :mod:`.splits`, :mod:`.loader`: folds, label fractions and the batch loader.
* :mod:`.enface_inputs`: en-face modalities as network input channels (``--enface-channels``).
* :mod:`.augment`, :mod:`.data`: in-plane augmentation (volume and label together) and batch sampling.
* :mod:`.ssim`, :mod:`.reconstruction`: the 1 - SSIM loss and the self-supervised reconstruction task.
* :mod:`.cli_common`: what ``fpn_train`` and ``fpn_pretrain`` share (flags, run folder, loop).
The commands themselves live in :mod:`fpnunet.commands` (``train``, ``pretrain``, ``train_folds``).
"""
