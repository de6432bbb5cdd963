"""Segmentation networks by name: ``build_network("fpn", in_channels, num_classes, **kwargs)``.

One small module per family (``fpn.py``, ``resensnet.py``, ``lachinov.py``, ``ipn.py``, ``omnia.py``,
``dsnet.py``, ``dxnet.py``);
importing this package registers them all.
"""
from fpnunet.networks.registry import (
    SegNetwork,
    available_networks,
    build_network,
    check_input_shape,
    network_class,
    register,
)

# model modules register themselves on import
from fpnunet.networks import fpn  # noqa: E402,F401  isort: skip
from fpnunet.networks import ipn, lachinov, resensnet  # noqa: E402,F401  isort: skip
from fpnunet.networks import dsnet, dxnet, omnia  # noqa: E402,F401  isort: skip
from fpnunet.networks import cmc  # noqa: E402,F401  isort: skip

__all__ = ["SegNetwork", "available_networks", "build_network", "check_input_shape", "network_class", "register"]
