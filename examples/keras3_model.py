"""A Keras 3 model for raytrain: trained on JAX, with no TensorFlow needed.

    raytrain train examples/hdf5.yaml --model examples/keras3_model.py:build --local
    raytrain train examples/hdf5.yaml --model examples/keras3_model.py:build --num-workers 2

raytrain sees ``import keras`` here and trains it as a Keras 3 model (model.framework: auto).
"""

import keras


def build(input_shape, num_classes):
    layers = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(num_classes, activation="softmax"),
    ])
