"""The ``cmc`` trainer: semi-supervised multimodal training by cross-modality collaboration.

* :mod:`.losses`: channel-wise semantic consistency, contrastive prediction consistency, coarse
  agreement, and the labelled/unlabelled combination;
* :mod:`.data`: batches of labelled and unlabelled cases with their en-face images;
* :mod:`.augment`: the shared spatial augmentation plus the en-face image's own misalignment;
* :mod:`.task`: the training task; :mod:`.trainer`: the registry entry (``fpn_train --trainer cmc``).

The model is :class:`fpnunet.networks.cmc.CMCNet`. docs/training.md explains the method.
"""
