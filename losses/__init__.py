"""Distillation losses: one file per family, every loss an `nn.Module` obeying `distill.contracts.DistillLoss`."""

from losses._reduce import LossInputError, NonFiniteError, masked_mean
from losses.ce import CE
from losses.compose import Compose, LinearWarmup
from losses.contrastive import QFormerContrastive
from losses.ctc import CTCAux
from losses.ddat import DDAT, KDTerm
from losses.feature_mse import FeatureMSE
from losses.gjsd import GeneralizedJSD
from losses.multilevel_ot import ULD, MultiLevelOT
from losses.sinkhorn import sinkhorn
from losses.token_kl import TokenKL

__all__ = [
    "CE",
    "CTCAux",
    "DDAT",
    "Compose",
    "FeatureMSE",
    "GeneralizedJSD",
    "KDTerm",
    "LinearWarmup",
    "LossInputError",
    "MultiLevelOT",
    "NonFiniteError",
    "QFormerContrastive",
    "TokenKL",
    "ULD",
    "masked_mean",
    "sinkhorn",
]
