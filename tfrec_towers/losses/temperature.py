"""Softmax temperature: a fixed or learnable divisor of similarities.

``logits = similarity / τ``; learnable: ``τ = exp(clip(log τ, log τ_min, log τ_max))``.

The learnable form follows CLIP (Radford et al. 2021, "Learning Transferable Visual
Models From Natural Language Supervision"): the trainable variable is ``log τ`` (so ``τ``
stays positive and updates are multiplicative) and ``τ`` is kept in a fixed range; CLIP
keeps its logit scale ``1/τ`` at most 100, hence the default ``min_temperature=0.01``.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Dict

import tensorflow as tf


def check_real(
    field: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Validates a real hyper-parameter against an interval; shared by the loss layers.

    Args:
      field: the argument's name, quoted in the error.
      value: the received value.
      low, high: the interval's bounds.
      low_open, high_open: whether the bound itself is excluded.

    Returns:
      ``value`` as a Python float.

    Raises:
      ValueError: naming ``field`` and the interval, if ``value`` is not a finite real
        (``bool`` is rejected) inside the interval.
    """
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not is_real or (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
        opening = "(" if low_open else "["
        closing = ")" if high_open or high == math.inf else "]"
        interval = f"{opening}{low}, {high}{closing}"
        raise ValueError(f"`{field}` must be a float in {interval}. Received: {value!r}")
    return float(value)


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class Temperature(tf.keras.layers.Layer):
    """Divides similarities by a fixed or learnable temperature ``τ``.

    ``logits = similarity / τ``. Fixed: ``τ = temperature``. Learnable: the trainable
    scalar variable ``log_temperature`` starts at ``log(temperature)`` and
    ``τ = exp(clip(log τ, log τ_min, log τ_max))``. The variable also carries a
    constraint clipping it to the same range, which Keras optimizers apply after each
    update, so ``log τ`` never drifts outside the range where its gradient is zero.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        learnable: bool = False,
        min_temperature: float = 0.01,
        max_temperature: float = 100.0,
        **kwargs: Any,
    ) -> None:
        """Initializes the layer.

        Args:
          temperature: ``τ`` (fixed) or its initial value (learnable); ``1.0`` leaves
            similarities unchanged, as TFRS's ``Retrieval(temperature=None)``.
          learnable: whether ``log τ`` is a trainable variable.
          min_temperature: lower bound ``τ_min`` of ``τ``.
          max_temperature: upper bound ``τ_max`` of ``τ``.
          **kwargs: passed to ``tf.keras.layers.Layer`` (``name``, ``dtype``).

        Raises:
          ValueError: if a temperature is not a positive finite number, if
            ``min_temperature > max_temperature`` or ``temperature`` lies outside
            ``[min_temperature, max_temperature]``, or ``learnable`` is not a bool.
        """
        super().__init__(**kwargs)
        for field, value in (
            ("temperature", temperature),
            ("min_temperature", min_temperature),
            ("max_temperature", max_temperature),
        ):
            check_real(field, value, 0.0, low_open=True)
        if not isinstance(learnable, bool):
            raise ValueError(f"`learnable` must be a bool. Received: {learnable!r}")
        if min_temperature > max_temperature:
            raise ValueError(
                f"`min_temperature` must not exceed `max_temperature` ({max_temperature}). Received: {min_temperature}"
            )
        if not min_temperature <= temperature <= max_temperature:
            raise ValueError(
                "`temperature` must lie in [`min_temperature`, `max_temperature`] = "
                f"[{min_temperature}, {max_temperature}]. Received: {temperature}"
            )
        self.initial_temperature = float(temperature)
        self.learnable = learnable
        self.min_temperature = float(min_temperature)
        self.max_temperature = float(max_temperature)
        self._log_bounds = (math.log(min_temperature), math.log(max_temperature))
        self.log_temperature = None
        if learnable:
            self.log_temperature = self.add_weight(
                name="log_temperature",
                shape=(),
                dtype=tf.float32,
                initializer=tf.keras.initializers.Constant(math.log(temperature)),
                constraint=functools.partial(
                    tf.clip_by_value,
                    clip_value_min=self._log_bounds[0],
                    clip_value_max=self._log_bounds[1],
                ),
                trainable=True,
            )

    @property
    def temperature(self) -> tf.Tensor:
        """The current ``τ``, a float32 scalar tensor."""
        if self.log_temperature is None:
            return tf.constant(self.initial_temperature, tf.float32)
        return tf.exp(tf.clip_by_value(self.log_temperature, *self._log_bounds))

    def call(self, similarity: tf.Tensor) -> tf.Tensor:
        """Scales similarities.

        Args:
          similarity: similarities of any shape, e.g. ``[batch, num_negatives]``.

        Returns:
          ``similarity / τ``, same shape and dtype.
        """
        return similarity / tf.cast(self.temperature, similarity.dtype)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            temperature=self.initial_temperature,
            learnable=self.learnable,
            min_temperature=self.min_temperature,
            max_temperature=self.max_temperature,
        )
        return config
