"""TFP's dense layers in a ``tf.function`` training step, on the benchmark's model.

Optional: needs the ``bench`` extra (tensorflow-cpu, tensorflow-probability, tf-keras).
``available()`` says whether it imports and, if not, why. TFP's layers need Keras 2,
so ``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is imported.

TFP's defaults are npvi's: N(0, 1) prior, mean-field Normal posterior
(softplus(u) + eps, loc ~ N(0, 0.1), u ~ N(-3, 0.1)), point-estimate bias, exact KL
added to ``net.losses`` once per call. The loss is ``(N / B) * sum(cross-entropy) +
sum(net.losses)`` (the same negative ELBO), minimised with Keras' Adam(1e-3).
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from timing import Variant  # noqa: E402

_CLASSES = {
    "reparameterization": "DenseReparameterization",
    "local_reparameterization": "DenseLocalReparameterization",
    "flipout": "DenseFlipout",
}
SHORT = {"reparameterization": "reparam", "local_reparameterization": "LRT", "flipout": "Flipout"}


def available() -> tuple[bool, str]:
    """``(True, versions)`` or ``(False, reason)``."""
    try:
        import tensorflow as tf
        import tensorflow_probability as tfp
        import tf_keras
    except Exception as error:  # noqa: BLE001 - ImportError, or a broken TF install
        return False, f"{type(error).__name__}: {error}"
    return (
        True,
        f"tensorflow {tf.__version__}, tensorflow-probability {tfp.__version__}, tf-keras {tf_keras.__version__}",
    )


def _sync(carry):
    carry[-1].numpy()
    return carry


def tfp_step(problem, estimator: str, x, y, lr: float, *, deterministic: bool = False) -> Variant:
    """A Variant whose step is one ``tf.function`` training step of TFP's layer (or Keras Dense)."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as keras

    warnings.filterwarnings("ignore", category=UserWarning, module=r"(tensorflow_probability|tf_keras)")
    tf.random.set_seed(0)
    hidden = len(problem.sizes) - 2
    if deterministic:
        layers = [
            keras.layers.Dense(u, activation="relu" if i < hidden else None) for i, u in enumerate(problem.sizes[1:])
        ]
        label = "Keras Dense (TF)"
    else:
        cls = getattr(tfp.layers, _CLASSES[estimator])
        layers = [cls(u, activation="relu" if i < hidden else None) for i, u in enumerate(problem.sizes[1:])]
        label = f"TFP {SHORT[estimator]}"
    net = keras.Sequential(layers)
    net.build((None, problem.sizes[0]))
    optimizer = keras.optimizers.Adam(lr)
    xs = tf.constant(np.asarray(x))
    ys = tf.constant(np.asarray(y))
    scale = problem.n / problem.batch

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            logits = net(xs)
            nll = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ys, logits=logits))
            loss = scale * nll + (tf.add_n(net.losses) if net.losses else 0.0)
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables, strict=True))
        return loss

    def advance(carry):
        return (train_step(),)

    return Variant(label, advance, (tf.constant(0.0),), sync=_sync)
