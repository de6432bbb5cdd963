"""fpnunet: self-configuring label-efficient 3D-to-2D segmentation (OCT volume -> en-face mask).

Stages, each its own subpackage: ``fpnunet.plans`` (fingerprint, planner, memory estimator),
``fpnunet.preprocessing``, ``fpnunet.training``, ``fpnunet.inference``, ``fpnunet.evaluation``.
Core modules: :mod:`fpnunet.paths`, :mod:`fpnunet.io`, :mod:`fpnunet.retina`, :mod:`fpnunet.synthetic`.
"""

__version__ = "0.1.0"
