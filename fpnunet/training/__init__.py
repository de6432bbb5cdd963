"""Training: ``fpn_train`` and the pieces self-supervised pretraining reuses.

One idea per module (import them directly; this package imports nothing so that
``fpnunet.training.splits`` stays light):

* :mod:`.run_config`, :mod:`.configure`, :mod:`.flags`: the one frozen :class:`~.run_config.RunConfig`, built once
  from the plan, the trainer and the flags (checked before any folder is touched).
* :mod:`.trainer`, :mod:`.registry`: the :class:`~.trainer.Trainer` base class with named hooks and
  the registries of trainers, losses, optimizers, schedules and augmentations; :mod:`.supervised`
  (with its whole-volume validation and export), :mod:`.reconstruction`, :mod:`.cmc`: the three
  registered trainers; :mod:`.run`: runs a RunConfig (and checks data and memory before it starts).
* :mod:`.loop`: the generic epoch loop (:class:`~.loop.EpochLoop`).
* :mod:`.optim`: optimizer and schedule factories.
* :mod:`.losses`: (soft Dice + BCE) / 2 or Dice + CE, masked.
* the training state of a checkpoint (optimizer, scheduler, RNG, log) is written and restored by
  the checkpoint format's owner, :mod:`fpnunet.checkpoint`, shared with inference.
* :mod:`.logger`: ``training_log.csv``, ``progress.png`` and the run's clock (ETA, heartbeat).
* :mod:`.pretrained`: loading pretrained weights by name and shape; finding the pretraining run.
* :mod:`.run_folder`: resume / overwrite policy, ``command.txt`` (names and the fold lock:
  :mod:`fpnunet.results_layout`).
* :mod:`.splits`, :mod:`.loader`: folds, label fractions and the batch loader.
* :mod:`.enface_inputs`: en-face modalities as network input channels (``--enface-inputs``).
* :mod:`.augment`, :mod:`.data`: in-plane augmentation (volume and label together) and batch sampling.
* :mod:`.ssim`, :mod:`.reconstruction`: the 1 - SSIM loss and the self-supervised reconstruction trainer.
The commands themselves live in :mod:`fpnunet.commands` (``train``, ``pretrain``, ``train_folds``).
"""
