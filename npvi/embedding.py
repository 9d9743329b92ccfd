r"""Variational embeddings: a Bayesian lookup table (Keras' ``Embedding``, Flax's ``Embed``).

``Embedding*(input_dim, output_dim)`` maps integer ids of any shape to rows of a kernel
:math:`E` of shape ``(input_dim, output_dim)``. A lookup is linear in the kernel,
:math:`E[\text{id}] = \text{one\_hot}(\text{id})\, E`, so the three estimators apply
(:class:`npvi.linear_ops.Embedding`), without a one-hot array:

* reparameterization: one table :math:`E \sim q` for the batch, ``out = E[ids]``;
* local reparameterization: each output element from its exact marginal,
  :math:`\mathcal{N}(\mu[\text{id}], \sigma^2[\text{id}])`, independently at every position
  (two positions holding the same id get independent draws; their covariance is dropped, as a
  convolution's is between positions);
* Flipout: :math:`\mu[\text{id}] + s_\text{id}\, \Delta E[\text{id}] \odot s_\text{out}`, with one
  sign per id and one per output element. That is Flipout of ``one_hot(ids) @ E`` exactly: of
  the signs :math:`s_\text{in}` of a one-hot row only the one at the id meets a non-zero.

Calling one creates ``"<name>.kernel"`` (event shape ``(input_dim, output_dim)``). There is no
bias by default, as in Keras (``use_bias=True`` adds a point-estimate bias of ``(output_dim,)``).
Ids outside ``[0, input_dim)`` are a ``ValueError`` when the ids are concrete; traced ones give
NaN rows (JAX's ``take`` fills them), never another row.

>>> import jax.numpy as jnp, numpyro
>>> import npvi
>>> embed = npvi.EmbeddingFlipout(100, 8, name="tokens")
>>> with numpyro.handlers.seed(rng_seed=0):
...     embed(jnp.array([[3, 14, 15], [92, 6, 5]])).shape
(2, 3, 8)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import distributions as dist

from npvi import estimators
from npvi.layers import (
    _COMMON_CONFIG_KEYS,
    KLChoice,
    LinearVariational,
    Prior,
    check_layer_name,
    check_positive_int,
)
from npvi.linear_ops import EMBEDDING, Embedding, OneHotRows
from npvi.posteriors import Posterior
from npvi.validation import is_concrete


def ids_as_rows(layer: str, inputs: Any, input_dim: int, min_rank: int = 1) -> OneHotRows:
    """Integer ids as the one-hot rows an embedding's op takes; errors name ``layer``.

    ``TypeError`` for ids that are not integers; ``ValueError`` for a rank below ``min_rank`` and,
    when the ids are concrete, for ids outside ``[0, input_dim)``.
    """
    ids = jnp.asarray(inputs)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(
            f"layer {layer!r}: expected integer ids in [0, {input_dim}), got dtype {ids.dtype}; "
            "one-hot or float inputs go to a dense layer, ids to an embedding (ids.astype(int) if they are whole)"
        )
    if ids.ndim < min_rank:
        raise ValueError(f"layer {layer!r}: expected ids of rank >= {min_rank} (batch, ...), got shape {ids.shape}")
    if is_concrete(ids) and ids.size:
        held = np.asarray(ids)
        low, high = int(held.min()), int(held.max())
        if low < 0 or high >= input_dim:
            raise ValueError(
                f"layer {layer!r}: ids must be in [0, {input_dim}) (input_dim={input_dim}), got ids from {low} to "
                f"{high}"
            )
    return OneHotRows(ids, jnp.ones(ids.shape, jnp.result_type(float)), input_dim)


class EmbeddingVariational(LinearVariational):
    """Shared implementation of the three embedding layers; use a subclass."""

    _CONFIG_KEYS = ("input_dim", "output_dim", *_COMMON_CONFIG_KEYS)
    linear_op: ClassVar[Embedding] = EMBEDDING

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        *,
        activation: str | Callable[[jax.Array], jax.Array] | None = None,
        name: str | None = None,
        kernel_prior: Prior | None = None,
        bias_prior: Prior | None = None,
        kernel_posterior: Posterior | None = None,
        bias_posterior: Posterior | None = None,
        kernel_kl: KLChoice = "exact",
        bias_kl: KLChoice = "exact",
        use_bias: bool = False,
        kernel_posterior_tensor_fn: Callable[[dist.Distribution], jax.Array] | None = None,
        bias_posterior_tensor_fn: Callable[[dist.Distribution], jax.Array] | None = None,
        activity_regularizer: Callable[[jax.Array], jax.Array] | None = None,
    ) -> None:
        check_layer_name(type(self).__name__, name, f"{input_dim!r}, {output_dim!r}")
        self.input_dim = check_positive_int(name, "input_dim", input_dim)
        self.output_dim = check_positive_int(name, "output_dim", output_dim)
        super().__init__(
            activation=activation, name=name, kernel_prior=kernel_prior, bias_prior=bias_prior,
            kernel_posterior=kernel_posterior, bias_posterior=bias_posterior, kernel_kl=kernel_kl,
            bias_kl=bias_kl, use_bias=use_bias, kernel_posterior_tensor_fn=kernel_posterior_tensor_fn,
            bias_posterior_tensor_fn=bias_posterior_tensor_fn, activity_regularizer=activity_regularizer,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.input_dim}, {self.output_dim}, name={self.name!r})"

    def _own_config(self) -> dict[str, Any]:
        return {"input_dim": int(self.input_dim), "output_dim": int(self.output_dim)}

    def _check_inputs(self, inputs: Any) -> OneHotRows:
        return ids_as_rows(self.name, inputs, self.input_dim)

    def _kernel_shape(self, x: OneHotRows) -> tuple[int, ...]:
        return (self.input_dim, self.output_dim)

    def _bias_shape(self) -> tuple[int, ...]:
        return (self.output_dim,)

    def _kernel_dim_names(self) -> list[str]:
        return [f"{self.name}_vocabulary"]

    def _out_dim_name(self) -> str:
        return f"{self.name}_features"


class EmbeddingReparameterization(EmbeddingVariational):
    r"""Embedding with the reparameterization estimator: one table :math:`E \sim q` for the batch.

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     EmbeddingReparameterization(10, 4, name="e")(jnp.array([1, 2, 1])).shape
    (3, 4)
    """

    default_estimator = estimators.REPARAMETERIZATION


class EmbeddingLocalReparameterization(EmbeddingVariational):
    r"""Embedding with local reparameterization: :math:`\mathcal{N}(\mu[\text{id}], \sigma^2[\text{id}])` per element.

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     EmbeddingLocalReparameterization(10, 4, name="e")(jnp.array([1, 2, 1])).shape
    (3, 4)
    """

    default_estimator = estimators.LOCAL_REPARAMETERIZATION


class EmbeddingFlipout(EmbeddingVariational):
    r"""Embedding with Flipout: :math:`\mu[\text{id}] + s_\text{id}\, \Delta E[\text{id}] \odot s_\text{out}`.

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     EmbeddingFlipout(10, 4, name="e")(jnp.array([1, 2, 1])).shape
    (3, 4)
    """

    default_estimator = estimators.FLIPOUT
