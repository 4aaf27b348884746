"""Training losses for hash codes (torch).

Every loss is a ``torch.nn.Module`` whose ``forward(codes, labels)`` takes the continuous codes
float ``[B, K]`` in [-1, 1] (the tanh output) and labels int64 ``[B]`` (CSQ multi-label: {0,1}
``[B, C]``) and returns a scalar. Build one by name with :func:`make_loss`.

Layout: :mod:`.distances` (pairwise distances, label masks, reductions) and :mod:`.mining`
(triplet miners) are the shared functional core; :mod:`.centers` generates CSQ hash centers;
one module per loss family (clusterings are scored with
:func:`hashindex.evaluation.clustering.nmi_batch`); :mod:`.quantization` holds the
quantization penalties and :class:`CombinedLoss`.
"""

from hashindex.training.losses.centers import (
    CenterCollisionWarning,
    HashCenters,
    bernoulli_centers,
    hadamard_centers,
    make_centers,
    min_pairwise_hamming,
    multilabel_centers,
)
from hashindex.training.losses.contrastive import ContrastiveLoss
from hashindex.training.losses.csq import CSQLoss
from hashindex.training.losses.facility import FacilityLocationLoss
from hashindex.training.losses.factory import LOSS_NAMES, LOSS_SPECS, LossSpec, make_loss
from hashindex.training.losses.lifted import LiftedStructuredLoss
from hashindex.training.losses.mining import all_triplets, hardest_negative_triplets, make_miner, semi_hard_triplets
from hashindex.training.losses.npair import NPairMCLoss
from hashindex.training.losses.quantization import CombinedLoss, QuantizationLoss, quantization_penalty
from hashindex.training.losses.softmax import SoftmaxCosineHashLoss
from hashindex.training.losses.triplet import TripletLoss

__all__ = [
    "LOSS_NAMES",
    "LOSS_SPECS",
    "CSQLoss",
    "CenterCollisionWarning",
    "CombinedLoss",
    "ContrastiveLoss",
    "FacilityLocationLoss",
    "HashCenters",
    "LiftedStructuredLoss",
    "LossSpec",
    "NPairMCLoss",
    "QuantizationLoss",
    "SoftmaxCosineHashLoss",
    "TripletLoss",
    "all_triplets",
    "bernoulli_centers",
    "hadamard_centers",
    "hardest_negative_triplets",
    "make_centers",
    "make_loss",
    "make_miner",
    "min_pairwise_hamming",
    "multilabel_centers",
    "quantization_penalty",
    "semi_hard_triplets",
]
