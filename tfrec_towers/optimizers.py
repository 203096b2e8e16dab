"""Optimizers beyond Keras's own: Adam that updates only the embedding rows a batch looked up.

Keras's Adam applies a sparse gradient (an embedding lookup's ``tf.IndexedSlices``) densely: it
decays the first and second moments of *every* row of the table, then writes every row of the
variable, each step. With a catalogue's embedding table that is most of a retrieval model's
optimizer time, for rows whose gradient is zero.

:class:`LazyAdam` is the lazy Adam of TensorFlow's ``LazyAdamOptimizer`` and TensorFlow Addons'
``LazyAdam``: for the unique rows ``I`` of a sparse gradient ``g``,

    m_I ← β₁·m_I + (1 − β₁)·g_I,   v_I ← β₂·v_I + (1 − β₂)·g_I²,
    w_I ← w_I − α·m_I / (√v_I + ε̂),   α = η·√(1 − β₂ᵗ) / (1 − β₁ᵗ),

and every other row keeps its variable and moments. Dense gradients (towers' dense layers) get
Keras's Adam exactly. It differs from Adam only for rows absent from a batch: Adam would still move
them by their decaying momentum; lazy Adam leaves them until they are looked up again (Kingma & Ba,
ICLR 2015, for Adam).
"""

from __future__ import annotations

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class LazyAdam(tf.keras.optimizers.Adam):
    """Adam whose sparse updates touch only the looked-up rows (see the module docstring).

    Takes Keras's Adam's arguments; ``amsgrad`` is not supported with sparse gradients.
    """

    def update_step(self, gradient, variable):
        """One update of ``variable``: lazy rows for a ``tf.IndexedSlices`` gradient, Keras's Adam otherwise."""
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        if self.amsgrad:
            raise ValueError("LazyAdam does not support `amsgrad` with sparse gradients.")
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        beta_1_power, beta_2_power = tf.pow(beta_1, local_step), tf.pow(beta_2, local_step)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        epsilon = self.epsilon * tf.sqrt(1 - beta_2_power) if self.adaptive_epsilon else self.epsilon
        key = self._var_key(variable)
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        rows = gradient.indices  # unique: Keras sums repeated rows before `update_step`
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * gradient.values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(gradient.values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))
