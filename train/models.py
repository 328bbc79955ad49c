"""Keras models, functional API only (tf2onnx converts functional Keras 3 models).

Every model takes the raw float32 feature matrix: standardisation is a Normalization
layer adapted on the training window, so the exported graph needs no transform
outside it. Every model outputs one float a row, shape (batch, 1):

- `mlp`: probability of fraud (sigmoid);
- `autoencoder`: reconstruction error, the mean over features of the squared
  difference between the standardised input and its reconstruction.
"""

from __future__ import annotations

import keras
import numpy as np

OUTPUT_NAME = "score"
INPUT_NAME = "features"


def quiet_tensorflow() -> None:
    """TensorFlow's Python warnings (e.g. predict() retracing) off, unless the user lowered
    TF_CPP_MIN_LOG_LEVEL from the "3" that `train` and `export` set by default."""
    import os

    import tensorflow as tf

    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3":
        tf.get_logger().setLevel("ERROR")


@keras.saving.register_keras_serializable(package="fraudscore")
class ReconstructionError(keras.layers.Layer):
    """Per-row mean squared difference of two tensors, kept as a (batch, 1) column."""

    def call(self, inputs):
        target, reconstruction = inputs
        return keras.ops.mean(keras.ops.square(target - reconstruction), axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="fraudscore")
def mean_of_output(y_true, y_pred):
    """Loss of a model whose output already is the per-row error to minimise."""
    return keras.ops.mean(y_pred)


def _normalization(train_matrix: np.ndarray) -> keras.layers.Normalization:
    norm = keras.layers.Normalization(name="standardise")
    norm.adapt(train_matrix)
    return norm


def build_mlp(
    train_matrix: np.ndarray,
    hidden: tuple[int, ...] = (64, 32),
    dropout: float = 0.2,
    learning_rate: float = 1e-3,
    name: str = "fraudscore_mlp",
) -> keras.Model:
    """Supervised classifier: standardise -> Dense/ReLU/Dropout blocks -> sigmoid."""
    inputs = keras.Input((train_matrix.shape[1],), name=INPUT_NAME, dtype="float32")
    h = _normalization(train_matrix)(inputs)
    for i, width in enumerate(hidden):
        h = keras.layers.Dense(width, activation="relu", name=f"dense_{i}")(h)
        if dropout:
            h = keras.layers.Dropout(dropout, name=f"dropout_{i}")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_NAME)(h)
    model = keras.Model(inputs, outputs, name=name)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
    return model


def build_autoencoder(
    train_matrix: np.ndarray,
    hidden: tuple[int, ...] = (32, 8),
    learning_rate: float = 1e-3,
    name: str = "fraudscore_autoencoder",
) -> keras.Model:
    """Autoencoder whose output is the reconstruction error, trained by minimising that output."""
    n = train_matrix.shape[1]
    inputs = keras.Input((n,), name=INPUT_NAME, dtype="float32")
    standardised = _normalization(train_matrix)(inputs)
    h = standardised
    for i, width in enumerate(hidden):
        h = keras.layers.Dense(width, activation="relu", name=f"encode_{i}")(h)
    for i, width in enumerate(reversed(hidden[:-1])):
        h = keras.layers.Dense(width, activation="relu", name=f"decode_{i}")(h)
    reconstruction = keras.layers.Dense(n, name="reconstruction")(h)
    outputs = ReconstructionError(name=OUTPUT_NAME)([standardised, reconstruction])
    model = keras.Model(inputs, outputs, name=name)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=mean_of_output)
    return model


def ensemble(members: list[keras.Model]) -> keras.Model:
    """One functional model whose output is the mean of its members' outputs."""
    if len(members) == 1:
        return members[0]
    inputs = keras.Input((members[0].inputs[0].shape[1],), name=INPUT_NAME, dtype="float32")
    outputs = [m(inputs) for m in members]
    averaged = keras.layers.Average(name=OUTPUT_NAME)(outputs)
    return keras.Model(inputs, averaged, name="fraudscore_ensemble")
