"""The cmc losses. Every term keeps the graph of BOTH branches (nothing is detached), so the
unlabelled cases train the OCT branch, the en-face branch and the shared distiller.

Shapes: logits ``(N, K, B, A)``; distilled features ``(N, S, B, A)``; ``mask`` ``(N, 1, B, A)``
(1 = valid pixel) or ``None``.

* :func:`semantic_consistency` (channel-wise): per sample, the channels' cosine-similarity
  (Gram) matrix over the plane and the channels' normalised mean activations must agree between
  the modalities. Both are unchanged when a modality's features move as a whole in the plane, so
  the term tolerates misregistration, unlike a pixel-wise distance.
* :func:`prototype_contrastive` (contrastive consistency of the predictions): each branch's
  prediction pools its own features into one prototype per sample and class; the prototype of
  sample ``n``, class ``k`` in one branch must be closer to the other branch's prototype of
  ``(n, k)`` than to any other ``(n', k')`` (InfoNCE, both directions).
* :func:`coarse_agreement`: each branch's probabilities, average-pooled over ``kernel`` pixels,
  must match the fused ones (a few pixels of misalignment barely change pooled maps).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fpnunet.plans.training_params import LossParams
from fpnunet.training.losses import LOSSES, SegmentationLoss

EPS = 1e-6


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``(N, K, B, A)`` logits -> class probabilities ``(N, K', B, A)`` (``K == 1``: ``[1 - p, p]``)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1.0 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


def semantic_consistency(feat_a: torch.Tensor, feat_b: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Channel-wise semantic consistency of two modalities' features ``(N, S, B, A)`` (module docstring)."""
    a = _masked(feat_a.float(), mask).flatten(2)
    b = _masked(feat_b.float(), mask).flatten(2)
    an, bn = F.normalize(a, dim=2, eps=EPS), F.normalize(b, dim=2, eps=EPS)
    gram_a, gram_b = an @ an.transpose(1, 2), bn @ bn.transpose(1, 2)
    gram = (gram_a - gram_b).pow(2).mean()
    count = a.new_tensor(float(a.shape[2])) if mask is None else mask.flatten(1).sum(1, keepdim=True).clamp_min(1.0)
    mean_a, mean_b = a.sum(2) / count, b.sum(2) / count
    descriptor = (1.0 - F.cosine_similarity(mean_a, mean_b, dim=1, eps=EPS)).mean()
    return gram + descriptor


def prototypes(probs: torch.Tensor, feat: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N * K', S)`` unit prototypes (prediction-weighted mean features) and their masses ``(N * K',)``."""
    w = _masked(probs, mask)  # (N, K', B, A)
    mass = w.flatten(2).sum(2)  # (N, K')
    pooled = torch.einsum("nkp,nsp->nks", w.flatten(2), feat.float().flatten(2)) / mass.clamp_min(EPS)[..., None]
    return F.normalize(pooled.reshape(-1, pooled.shape[-1]), dim=1, eps=EPS), mass.reshape(-1)


def prototype_contrastive(logits_a: torch.Tensor, feat_a: torch.Tensor, logits_b: torch.Tensor,
                          feat_b: torch.Tensor, temperature: float = 0.2, mask: torch.Tensor | None = None,
                          min_mass: float = 1.0) -> torch.Tensor:
    """Symmetric InfoNCE between the two branches' class prototypes (module docstring); rows whose
    class has less than ``min_mass`` pixels of probability in either branch are not anchors (they
    stay as negatives). No anchor: 0 (still connected to the graph)."""
    va, ma = prototypes(class_probabilities(logits_a), feat_a, mask)
    vb, mb = prototypes(class_probabilities(logits_b), feat_b, mask)
    sim = va @ vb.t() / float(temperature)
    valid = (ma >= min_mass) & (mb >= min_mass)
    if int(valid.sum()) < 1 or sim.shape[0] < 2:
        return sim.sum() * 0.0
    target = torch.arange(sim.shape[0], device=sim.device)
    loss_ab = F.cross_entropy(sim[valid], target[valid])
    loss_ba = F.cross_entropy(sim.t()[valid], target[valid])
    return (loss_ab + loss_ba) / 2.0


def coarse_agreement(logits: torch.Tensor, fused: torch.Tensor, mask: torch.Tensor | None = None,
                     kernel: int = 8) -> torch.Tensor:
    """Mean squared difference of ``kernel``-pooled class probabilities of a branch and the fusion."""
    p, q = _masked(class_probabilities(logits), mask), _masked(class_probabilities(fused), mask)
    k = (min(kernel, p.shape[-2]), min(kernel, p.shape[-1]))
    return (F.avg_pool2d(p, k, ceil_mode=True) - F.avg_pool2d(q, k, ceil_mode=True)).pow(2).mean()


@LOSSES.register("cmc")
class CMCLoss:
    """Supervised loss on the labelled rows of a batch plus the consistency losses on every row.

    ``__call__(out, target, mask, enface_target, enface_mask, labelled, ramp) -> (total, parts)``:
    ``out`` the model's training dict; ``target``/``mask`` on the OCT grid (``target`` as channel
    indices); ``enface_target``/``enface_mask`` moved with the en-face image's misalignment;
    ``labelled`` ``(N,)`` 1 for labelled rows; ``ramp`` in [0, 1] scales the consistency weights.
    """

    def __init__(self, num_outputs: int, params: LossParams) -> None:
        self.params = params
        self.seg = SegmentationLoss.from_params(num_outputs, params)

    def __call__(self, out: dict[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor | None,
                 enface_target: torch.Tensor, enface_mask: torch.Tensor | None, labelled: torch.Tensor,
                 ramp: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        p = self.params
        rows = labelled > 0.5
        parts: dict[str, Any] = {}
        total = out["fused"].sum() * 0.0
        if bool(rows.any()):
            def pick(t: torch.Tensor | None) -> torch.Tensor | None:
                return None if t is None else t[rows]
            sup = self.seg(out["fused"][rows], target[rows], pick(mask))
            branch = self.seg(out["oct"][rows], target[rows], pick(mask)) \
                + self.seg(out["enface"][rows], enface_target[rows], pick(enface_mask))
            total = total + sup + p.branch_weight * branch
            parts |= {"sup_fused": float(sup.detach()), "sup_branches": float(branch.detach())}
        sem = semantic_consistency(out["feat_oct"], out["feat_enface"], mask)
        con = prototype_contrastive(out["oct"], out["feat_oct"], out["enface"], out["feat_enface"],
                                    p.temperature, mask)
        agr = coarse_agreement(out["oct"], out["fused"], mask) + coarse_agreement(out["enface"], out["fused"], mask)
        total = total + ramp * (p.semantic_weight * sem + p.contrastive_weight * con + p.agreement_weight * agr)
        parts |= {"semantic": float(sem.detach()), "contrastive": float(con.detach()), "agreement": float(agr.detach())}
        return total, parts
