"""npvi: variational Bayesian dense, convolutional and embedding layers for NumPyro.

TFP's ``DenseReparameterization``, ``DenseLocalReparameterization``,
``DenseFlipout`` and ``Convolution{1,2,3}D{Reparameterization,Flipout}`` (plus
local-reparameterization convolutions), done the NumPyro way: priors are sample sites, the posterior
lives in a guide, the estimators are effect handlers, and the KL is part of the
ELBO.
"""

from npvi import handlers, losses, plots, serialization, sharding
from npvi.checkpoints import Checkpoints
from npvi.compilation_cache import enable_compilation_cache
from npvi.conv import (
    Conv1DFlipout,
    Conv1DLocalReparameterization,
    Conv1DReparameterization,
    Conv2DFlipout,
    Conv2DLocalReparameterization,
    Conv2DReparameterization,
    Conv3DFlipout,
    Conv3DLocalReparameterization,
    Conv3DReparameterization,
    Convolution1DFlipout,
    Convolution1DReparameterization,
    Convolution2DFlipout,
    Convolution2DReparameterization,
    Convolution3DFlipout,
    Convolution3DReparameterization,
)
from npvi.dense_general import DenseGeneralFlipout, DenseGeneralLocalReparameterization, DenseGeneralReparameterization
from npvi.early_stopping import EarlyStopping
from npvi.elbo import ELBO
from npvi.embedding import EmbeddingFlipout, EmbeddingLocalReparameterization, EmbeddingReparameterization
from npvi.eqx_modules import random_eqx_module
from npvi.families import LowRankNormal, LowRankNormalWeights, MatrixVariateNormal
from npvi.flax_modules import random_flax_module, random_nnx_module
from npvi.guides import MeanFieldGuide
from npvi.inference_data import to_inference_data
from npvi.io import load, load_state, save
from npvi.ivon import IVONState, ivon
from npvi.kl import kl_term
from npvi.layers import DenseFlipout, DenseLocalReparameterization, DenseReparameterization
from npvi.ood import aupr, auroc
from npvi.posteriors import MeanFieldNormal, MopedNormal, PointMass, PosteriorFamily
from npvi.prediction import median_model
from npvi.predictive import Predictive, predict
from npvi.priors import hierarchical_normal_prior, horseshoe_prior, learned_normal_prior, scale_mixture_prior
from npvi.regularizers import KLDivergenceAddLoss, KLDivergenceRegularizer, SamplePoints
from npvi.training import DivergenceError, FitResult, Trainer, fit
from npvi.uncertainty import (
    classification_summary,
    expected_calibration_error,
    regression_summary,
    reliability_diagram,
)

__version__ = "0.1.0"

__all__ = [
    "Checkpoints",
    "Conv1DFlipout",
    "Conv1DLocalReparameterization",
    "Conv1DReparameterization",
    "Conv2DFlipout",
    "Conv2DLocalReparameterization",
    "Conv2DReparameterization",
    "Conv3DFlipout",
    "Conv3DLocalReparameterization",
    "Conv3DReparameterization",
    "Convolution1DFlipout",
    "Convolution1DReparameterization",
    "Convolution2DFlipout",
    "Convolution2DReparameterization",
    "Convolution3DFlipout",
    "Convolution3DReparameterization",
    "DenseFlipout",
    "DenseGeneralFlipout",
    "DenseGeneralLocalReparameterization",
    "DenseGeneralReparameterization",
    "DenseLocalReparameterization",
    "DenseReparameterization",
    "DivergenceError",
    "ELBO",
    "EarlyStopping",
    "EmbeddingFlipout",
    "EmbeddingLocalReparameterization",
    "EmbeddingReparameterization",
    "FitResult",
    "IVONState",
    "KLDivergenceAddLoss",
    "KLDivergenceRegularizer",
    "LowRankNormal",
    "LowRankNormalWeights",
    "MatrixVariateNormal",
    "MeanFieldGuide",
    "MeanFieldNormal",
    "MopedNormal",
    "PointMass",
    "PosteriorFamily",
    "Predictive",
    "SamplePoints",
    "Trainer",
    "aupr",
    "auroc",
    "classification_summary",
    "enable_compilation_cache",
    "expected_calibration_error",
    "fit",
    "ivon",
    "handlers",
    "hierarchical_normal_prior",
    "horseshoe_prior",
    "kl_term",
    "learned_normal_prior",
    "load",
    "load_state",
    "median_model",
    "predict",
    "losses",
    "plots",
    "random_eqx_module",
    "random_flax_module",
    "random_nnx_module",
    "regression_summary",
    "reliability_diagram",
    "save",
    "scale_mixture_prior",
    "to_inference_data",
    "serialization",
    "sharding",
    "__version__",
]
