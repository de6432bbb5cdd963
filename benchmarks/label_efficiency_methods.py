"""The rows of the label-efficiency table (``benchmarks/label_efficiency.py``): methods and runs.

A :class:`Method` is a network trained from scratch or fine-tuned from a pretraining (its whole
network, or only the 2D encoder of another network's), by the supervised trainer or another; a
:class:`Run` is one method at one label fraction, fold and seed. :func:`methods_of` gives the rows
of a sweep in the paper's order.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

FRACTIONS = (0.05, 0.1, 0.2, 1.0)
TARGETS = ("FAF", "SLO")
DISPLAY = {"fpn": "FPN", "ipn": "IPN", "ipnv2": "IPNv2", "lachinov": "Lachinov et al.", "resensnet": "ReSensNet",
           "omnia": "Omnia-Net", "dsnet": "DS-Net", "dxnet": "DX-Net"}
RUN_COLUMNS = ["method", "network", "trainer", "pretrain", "fraction", "fold", "seed", "dice", "folder"]
"""The report's run rows (one per run; ``folder`` is left out of ``runs.csv``)."""


# ----------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Method:
    """A row of the table: a network, trained from scratch (``pretrain None``) or fine-tuned, by the
    ``supervised`` trainer or another (``cmc``: semi-supervised multimodal, row ``... + CMC``)."""

    network: str
    pretrain: str | None = None
    encoder_from: str | None = None
    """Fine-tune from the 2D encoder of this network's pretraining (``--encoder-weights``), not the whole net."""
    trainer: str = "supervised"

    @property
    def folder_tag(self) -> str:
        """The initialisation part of the model folder name (``scratch``, ``ssl-FAF``, ``enc-ssl-FAF``)."""
        if self.pretrain is None:
            return "scratch"
        return f"enc-ssl-{self.pretrain}" if self.encoder_from else f"ssl-{self.pretrain}"

    @property
    def key(self) -> str:
        return self.folder_tag if self.trainer == "supervised" else f"{self.folder_tag}-{self.trainer}"

    @property
    def label(self) -> str:
        name = DISPLAY.get(self.network, self.network)
        if self.pretrain is not None:
            name = (f"{name} + {self.pretrain} SSL encoder ({DISPLAY.get(self.encoder_from, self.encoder_from)})"
                    if self.encoder_from else f"{name} + {self.pretrain} SSL")
        return name if self.trainer == "supervised" else f"{name} + {self.trainer.upper()}"

    @property
    def pretrain_network(self) -> str:
        return self.encoder_from or self.network


@dataclass(frozen=True)
class Run:
    method: Method
    fraction: float
    fold: int
    seed: int


def methods_of(networks: list[str], pretrain_networks: list[str], targets: list[str],
               encoder_networks: tuple[str, ...] = (), encoder_source: str = "omnia",
               cmc_networks: tuple[str, ...] = ()) -> list[Method]:
    """Scratch for every network, then SLO / FAF fine-tuning for the pretrained ones (paper order),
    then the ``encoder_networks`` initialised from the 2D encoder of ``encoder_source``'s pretraining,
    then the same with ``--trainer cmc`` for ``cmc_networks``."""
    out = [Method(n) for n in networks]
    for n in networks:
        if n in pretrain_networks:
            out += [Method(n, t) for t in sorted(targets, key=lambda t: t != "SLO")]
        if n in encoder_networks:
            out += [Method(n, t, encoder_source) for t in sorted(targets, key=lambda t: t != "SLO")]
    out += [replace(m, trainer="cmc") for m in list(out) if m.network in cmc_networks]
    return out
