"""npvi: variational Bayesian dense layers for NumPyro.

TFP's ``DenseReparameterization``, ``DenseLocalReparameterization`` and
``DenseFlipout``, done the NumPyro way: priors are sample sites, the posterior
lives in a guide, the estimators are effect handlers, and the KL is part of the
ELBO.
"""

from npvi import handlers, losses, serialization
from npvi.elbo import ELBO
from npvi.guides import MeanFieldGuide
from npvi.io import load, save
from npvi.kl import kl_term
from npvi.layers import DenseFlipout, DenseLocalReparameterization, DenseReparameterization
from npvi.posteriors import MeanFieldNormal, PointMass
from npvi.regularizers import KLDivergenceAddLoss, KLDivergenceRegularizer, SamplePoints

__version__ = "0.1.0"

__all__ = [
    "DenseFlipout",
    "DenseLocalReparameterization",
    "DenseReparameterization",
    "ELBO",
    "KLDivergenceAddLoss",
    "KLDivergenceRegularizer",
    "MeanFieldGuide",
    "MeanFieldNormal",
    "PointMass",
    "SamplePoints",
    "handlers",
    "kl_term",
    "load",
    "losses",
    "save",
    "serialization",
    "__version__",
]
