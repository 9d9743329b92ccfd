"""npvi.losses against the numbers printed in the two tf.keras.losses.KLDivergence seed pages."""

import json
from decimal import Decimal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npvi.losses import REDUCTIONS, KLDivergence, kl_divergence

# The r2.4 page's standalone-usage inputs.
Y_TRUE = [[0, 1], [0, 0]]
Y_PRED = [[0.6, 0.4], [0.4, 0.6]]


def agrees_with_printed(printed: str, value: float) -> bool:
    """The printed number is ``value`` cut to the printed digits (its digits are a prefix).

    The Keras page prints 0.366 for 0.36652 (TF's doctest checker compares with
    rtol = atol = 1e-3), so truncation, not rounding, is what every printed number
    satisfies; we check it on top of TF's own criterion.
    """
    p = Decimal(printed)
    exponent = p.as_tuple().exponent  # e.g. -3 for 0.366, -8 for -3.08e-06
    quantum = Decimal(1).scaleb(exponent)
    truncated = Decimal(repr(float(value))).quantize(quantum, rounding="ROUND_DOWN")
    return truncated == p and np.allclose(float(printed), value, rtol=1e-3, atol=1e-3)


def test_r24_default_reduction_is_sum_over_batch_size():
    loss = KLDivergence()(Y_TRUE, Y_PRED)
    assert loss.shape == () and loss.dtype == jnp.float32
    assert agrees_with_printed("0.458", loss)


def test_r24_sample_weight():
    kl = KLDivergence()
    assert agrees_with_printed("0.366", kl(Y_TRUE, Y_PRED, sample_weight=[0.8, 0.2]))


def test_r24_sum_reduction():
    kl = KLDivergence(reduction="sum")
    assert agrees_with_printed("0.916", kl(Y_TRUE, Y_PRED))


def test_r24_none_reduction():
    kl = KLDivergence(reduction="none")
    out = kl(Y_TRUE, Y_PRED)
    assert out.shape == (2,) and out.dtype == jnp.float32
    assert agrees_with_printed("0.916", out[0])
    assert agrees_with_printed("-3.08e-06", out[1])
    # the second is pure clipping: 2 * 1e-7 * log(1e-7 / 0.5) to 3 significant figures
    assert f"{float(out[1]):.3g}" == "-3.08e-06"


def test_r20_print_value():
    k = KLDivergence()
    loss = k([.4, .9, .2], [.5, .8, .12])
    # The page prints loss.numpy() with print(): NumPy's shortest float32 repr.
    assert str(np.asarray(loss)) == "0.11891246"


def test_values_match_the_formula_in_float64():
    # Independent float64 arithmetic: the float32 results agree to float32 precision (~1e-7 relative).
    e = 1e-7
    row0 = e * np.log(e / 0.6) + 1.0 * np.log(1.0 / 0.4)
    row1 = e * np.log(e / 0.4) + e * np.log(e / 0.6)
    np.testing.assert_allclose(KLDivergence(reduction="none")(Y_TRUE, Y_PRED), [row0, row1], rtol=1e-6)
    np.testing.assert_allclose(KLDivergence()(Y_TRUE, Y_PRED, [0.8, 0.2]), (0.8 * row0 + 0.2 * row1) / 2, rtol=1e-6)
    np.testing.assert_allclose(
        KLDivergence("mean_with_sample_weight")(Y_TRUE, Y_PRED, [0.8, 0.2]), (0.8 * row0 + 0.2 * row1) / 1.0, rtol=1e-6
    )


def test_auto_is_sum_over_batch_size_and_none_alias():
    assert KLDivergence("auto")(Y_TRUE, Y_PRED) == KLDivergence()(Y_TRUE, Y_PRED)
    np.testing.assert_array_equal(KLDivergence(None)(Y_TRUE, Y_PRED), KLDivergence("none")(Y_TRUE, Y_PRED))


def test_jit_and_grad():
    kl = KLDivergence()
    y_pred = jnp.array(Y_PRED)
    assert jax.jit(kl)(jnp.array(Y_TRUE), y_pred) == kl(Y_TRUE, y_pred)
    # d/dp of mean_i sum_k t_ik log(t_ik / p_ik) = -t / (p * n): inside the clip range, exact.
    grad = jax.grad(lambda p: kl(Y_TRUE, p))(y_pred)
    t = np.clip(np.array(Y_TRUE, np.float64), 1e-7, 1)
    np.testing.assert_allclose(grad, -t / (np.array(Y_PRED) * 2), rtol=1e-5)
    assert jax.jit(kl_divergence)(jnp.array(Y_TRUE), y_pred).shape == (2,)


def test_y_true_is_cast_to_y_pred_dtype_and_clipped():
    out = kl_divergence(jnp.array([[2, 0]]), jnp.array([[0.5, 0.0]], jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    # y_true [1, 1e-7] after clipping; y_pred [0.5, 1e-7]: log 2 + 0
    np.testing.assert_allclose(np.float32(out[0]), np.log(2.0), rtol=1e-2)  # bfloat16: 8 bits of mantissa


def test_sample_weight_shapes():
    # per-sample loss of shape (2, 3) from inputs of shape (2, 3, 4)
    y_true = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4)))
    y_pred = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4)))
    per = kl_divergence(y_true, y_pred)
    none = KLDivergence("none")
    np.testing.assert_allclose(none(y_true, y_pred, 2.0), 2.0 * per)  # scalar
    w = jnp.array([0.5, 2.0])  # [batch]: one weight per sample, over every loss element
    np.testing.assert_allclose(none(y_true, y_pred, w), per * w[:, None])
    w3 = jnp.array([1.0, 0.0, 3.0])  # broadcasts to (2, 3), as Keras does for rank >= 3
    np.testing.assert_allclose(none(y_true, y_pred, w3), per * w3)
    full = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(none(y_true, y_pred, full), per * full)
    np.testing.assert_allclose(none(y_true, y_pred, full[..., None]), per * full)  # trailing 1 squeezed
    # sum_over_batch_size divides by the number of loss elements (6), even when weighted
    np.testing.assert_allclose(KLDivergence()(y_true, y_pred, w), jnp.sum(per * w[:, None]) / 6, rtol=1e-6)
    np.testing.assert_allclose(
        KLDivergence("mean_with_sample_weight")(y_true, y_pred, w), jnp.sum(per * w[:, None]) / (3 * 2.5), rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"shape \(4,\).*shape \(2, 3\)"):
        none(y_true, y_pred, jnp.ones(4))
    with pytest.raises(ValueError, match=r"shape \(3, 3\).*shape \(2, 3\)"):
        none(y_true, y_pred, jnp.ones((3, 3)))


def test_mean_with_sample_weight_zero_weights_is_zero():
    assert KLDivergence("mean_with_sample_weight")(Y_TRUE, Y_PRED, [0.0, 0.0]) == 0.0


def test_unknown_reduction_lists_the_valid_ones():
    with pytest.raises(ValueError, match="sum_over_batch_size.*mean_with_sample_weight.*got 'mean_squared'"):
        KLDivergence(reduction="mean_squared")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_config_round_trip_through_json(reduction):
    loss = KLDivergence(reduction=reduction, name="my_kl")
    config = json.loads(json.dumps(loss.get_config()))
    assert config == {"reduction": reduction, "name": "my_kl"}
    rebuilt = KLDivergence.from_config(config)
    assert (rebuilt.reduction, rebuilt.name) == (reduction, "my_kl")
    np.testing.assert_array_equal(rebuilt(Y_TRUE, Y_PRED, [0.8, 0.2]), loss(Y_TRUE, Y_PRED, [0.8, 0.2]))


def test_default_name_and_bad_config():
    assert KLDivergence().get_config() == {"reduction": "sum_over_batch_size", "name": "kl_divergence"}
    with pytest.raises(ValueError, match="unknown keys"):
        KLDivergence.from_config({"reduction": "sum", "dtype": "float32"})
