"""Learning-rate schedules: a linear warm-up, then a cosine or linear decay to a floor.

The warm-up avoids the large, noisy first updates of Adam on freshly initialised embeddings; the
decay anneals the step size towards the end of training, as the sequential recommenders trained
with a full cross-entropy do (Klenitskiy & Vasilev, RecSys 2023, "Turning Dross Into Gold Loss: is
BERT4Rec really better than SASRec?"; the cosine form is Loshchilov & Hutter, ICLR 2017, "SGDR").

The schedule is a function of the optimizer's step counter alone, and ``optimizer.iterations`` is
saved in every checkpoint: a resumed run continues the schedule where it stopped.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Literal, Optional

import tensorflow as tf

from tfrec_towers.losses.negatives import check_int
from tfrec_towers.losses.temperature import check_real

DecayName = Literal["none", "cosine", "linear"]
DECAYS = ("none", "cosine", "linear")


def crosses_multiple(previous: int, step: int, every: int) -> bool:
    """Whether a step-count schedule "every ``every`` steps" is due after moving from step
    ``previous`` to ``step``: a multiple of ``every`` lies in ``(previous, step]`` (never with
    ``every`` 0). One training-function call may run several steps (``training.steps_per_execution``),
    so callbacks see the steps in jumps."""
    return every > 0 and step // every > previous // every


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class WarmupDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up over ``W`` steps, then a decay to ``f · η`` at the last step ``T − 1``.

    For the 0-based step ``t`` (the optimizer's ``iterations`` when it applies the update)::

        η(t) = η · (t + 1) / W                               for t < W
        η(t) = η · (f + (1 − f) · d(p)),  p = min(1, (t − W) / (T − 1 − W))   for t ≥ W

    with ``d(p) = (1 + cos(π p)) / 2`` (cosine), ``1 − p`` (linear) or ``1`` (none: constant after
    the warm-up; ``T`` and ``f`` are then unused). The first step already moves (``η / W``), step
    ``W − 1`` reaches ``η``, the last step ``T − 1`` takes ``f · η``; a step past ``T − 1`` keeps
    ``f · η``. With a single decay step (``T = W + 1``) that step takes ``f · η``.

    Args:
      learning_rate: ``η > 0``, the peak rate.
      warmup_steps: ``W ≥ 0`` (0: no warm-up).
      decay: ``"none"``, ``"cosine"`` or ``"linear"``.
      final_learning_rate_fraction: ``f`` in ``[0, 1]``.
      total_steps: ``T``, the steps of the whole run (epochs × steps per epoch); required by a
        decay, and then ``> W``.

    Raises:
      ValueError: a value outside its range, an unknown ``decay``, or a decay without
        ``total_steps > warmup_steps``.
    """

    def __init__(
        self,
        learning_rate: float,
        warmup_steps: int = 0,
        decay: DecayName = "none",
        final_learning_rate_fraction: float = 0.0,
        total_steps: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.learning_rate = check_real("learning_rate", learning_rate, 0.0, low_open=True)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        if decay not in DECAYS:
            raise ValueError(f"`decay` must be one of {', '.join(map(repr, DECAYS))}. Received: {decay!r}")
        self.decay = decay
        self.final_learning_rate_fraction = check_real(
            "final_learning_rate_fraction", final_learning_rate_fraction, 0.0, 1.0
        )
        self.total_steps = None if total_steps is None else check_int("total_steps", total_steps, 1)
        if decay != "none" and (self.total_steps is None or self.total_steps <= self.warmup_steps):
            raise ValueError(
                f"`total_steps` must exceed `warmup_steps` ({self.warmup_steps}) for the {decay!r} decay to have "
                f"steps to decay over. Received: {total_steps!r}"
            )

    def __call__(self, step: Any) -> tf.Tensor:
        """The rate of the 0-based ``step`` (a scalar tensor or number): float32 scalar."""
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.learning_rate, tf.float32)
        if self.decay == "none" or self.total_steps is None:
            after_warmup = peak
        else:
            decay_steps = self.total_steps - 1 - self.warmup_steps
            progress = (
                tf.ones([], tf.float32)
                if decay_steps == 0
                else tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
            )
            shape = 0.5 * (1.0 + tf.cos(math.pi * progress)) if self.decay == "cosine" else 1.0 - progress
            fraction = self.final_learning_rate_fraction
            after_warmup = peak * (fraction + (1.0 - fraction) * shape)
        if not self.warmup_steps:
            return after_warmup
        warming = peak * (step + 1.0) / self.warmup_steps
        return tf.where(step < self.warmup_steps, warming, after_warmup)

    def get_config(self) -> Dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
            "final_learning_rate_fraction": self.final_learning_rate_fraction,
            "total_steps": self.total_steps,
        }


class LearningRateHistory(tf.keras.callbacks.Callback):
    """Adds ``learning_rate`` to every epoch's logs: the rate of the epoch's last step.

    Put it before the callbacks that record the logs (Keras's ``History``, a checkpointing one),
    so the per-epoch rate is in the run's history (``history.json``).
    """

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        if logs is not None:
            # With a schedule, the optimizer's `learning_rate` is the rate it applied at its last step.
            logs["learning_rate"] = float(tf.keras.backend.get_value(self.model.optimizer.learning_rate))
