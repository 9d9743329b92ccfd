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


# --------------------------------------------------------------------------- the CNN of issue 14 (bench/conv.py)

_CONV_CLASSES = {
    "reparameterization": ("Convolution2DReparameterization", "DenseReparameterization"),
    "flipout": ("Convolution2DFlipout", "DenseFlipout"),
}  # TFP has no local-reparameterization convolution


def tfp_conv_estimators() -> tuple[str, ...]:
    """The estimators TFP has a convolutional layer for."""
    return tuple(_CONV_CLASSES)


def conv_net(problem, estimator: str | None):
    """The benchmark's CNN (``conv_steps.ConvProblem``) as a built ``tf_keras.Sequential``.

    ``estimator=None`` gives the deterministic CNN (Keras ``Conv2D`` and ``Dense``).
    """
    import tf_keras as keras

    if estimator is None:
        conv_cls, dense_cls = keras.layers.Conv2D, keras.layers.Dense
    else:
        import tensorflow_probability as tfp

        conv_name, dense_name = _CONV_CLASSES[estimator]
        conv_cls, dense_cls = getattr(tfp.layers, conv_name), getattr(tfp.layers, dense_name)
    layers = []
    for filters in problem.filters:
        layers.append(conv_cls(filters, problem.kernel, padding="same", activation="relu"))
        layers.append(keras.layers.MaxPooling2D(2))
    layers.append(keras.layers.Flatten())
    for i, units in enumerate(problem.dense):
        layers.append(dense_cls(units, activation="relu" if i < len(problem.dense) - 1 else None))
    net = keras.Sequential(layers)
    net.build((None, *problem.image))
    return net


def keras_step(net, label: str, x, y, lr: float, scale: float) -> Variant:
    """A Variant whose step is one ``tf.function`` step: ``scale * sum(cross-entropy) + sum(net.losses)``, Adam."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    optimizer = keras.optimizers.Adam(lr)
    xs = tf.constant(np.asarray(x))
    ys = tf.constant(np.asarray(y))

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


def tfp_conv_step(problem, estimator: str | None, x, y, lr: float) -> Variant:
    """TFP's ``Convolution2D*`` + ``Dense*`` CNN (or, for ``None``, the Keras CNN) in a ``tf.function`` step."""
    import tensorflow as tf

    warnings.filterwarnings("ignore", category=UserWarning, module=r"(tensorflow_probability|tf_keras)")
    if estimator is not None and estimator not in _CONV_CLASSES:
        raise ValueError(f"TFP has no convolution for {estimator!r}; it has {sorted(_CONV_CLASSES)}")
    tf.random.set_seed(0)
    label = "Keras CNN (TF)" if estimator is None else f"TFP {SHORT[estimator]}"
    return keras_step(conv_net(problem, estimator), label, x, y, lr, problem.n / problem.batch)
