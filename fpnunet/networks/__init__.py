"""Segmentation networks by name: ``build_network("fpn", in_channels, num_classes, **kwargs)``.

One small module per family (``fpn.py``, ``resensnet.py``, ``lachinov.py``, ``ipn.py``, ``omnia.py``,
``dsnet.py``, ``dxnet.py``), each registering its networks with ``@register``; the registry imports a
family's module when one of its names is first asked for (:data:`.registry.FAMILIES`).
"""
from fpnunet.networks.registry import (
    SegNetwork,
    available_networks,
    build_network,
    check_input_shape,
    network_class,
    register,
)

__all__ = ["SegNetwork", "available_networks", "build_network", "check_input_shape", "network_class", "register"]
