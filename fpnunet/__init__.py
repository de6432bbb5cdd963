"""fpnunet: self-configuring label-efficient 3D-to-2D segmentation (OCT volume -> en-face mask).

Stages, each its own subpackage: ``fpnunet.plans`` (fingerprint, planner, memory estimator),
``fpnunet.preprocessing``, ``fpnunet.training``, ``fpnunet.inference``, ``fpnunet.evaluation``,
``fpnunet.report``; the console scripts are ``fpnunet.commands``. Core modules are the top-level
ones (:mod:`fpnunet.paths`, :mod:`fpnunet.io`, :mod:`fpnunet.checkpoint`, ...). Imports run one
way: docs/design.md, "Layers".
"""

__version__ = "0.1.0"
