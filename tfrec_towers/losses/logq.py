"""logQ correction of sampled-softmax logits.

Formula: ``s^c(x, y_j) = s(x, y_j) − log p_j``.

Yi et al., RecSys 2019, "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations", eq. 3 (after Bengio & Senécal's importance-sampled softmax): negatives
drawn with probability ``p_j`` (popular items more often) bias the sampled softmax
towards demoting popular items; subtracting ``log p_j`` from each logit removes that bias.
"""

from __future__ import annotations

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class LogQCorrection(tf.keras.layers.Layer):
    """Subtracts each candidate's log sampling probability from its logits.

    ``s^c(x, y_j) = s(x, y_j) − log p_j``. Apply it to the logits that enter the softmax
    (after any temperature division): the correction is a log-probability, so it lives in
    the softmax's own units. ``log p_j`` comes from a
    :class:`~tfrec_towers.losses.frequency.CandidateProbability` or a
    :class:`~tfrec_towers.losses.negatives.NegativeSet`'s ``log_q``. The positive's own
    logit is corrected too, as in the paper.
    """

    def call(self, logits: tf.Tensor, log_q: tf.Tensor) -> tf.Tensor:
        """Corrects logits for the sampling probability of each candidate.

        Args:
          logits: ``[batch, N]`` ``s(x_i, y_j)``.
          log_q: ``[N]`` ``log p_j`` of each candidate column.

        Returns:
          ``[batch, N]`` ``s(x_i, y_j) − log p_j``, in the dtype of ``logits``.

        Raises:
          ValueError: if the static ranks are not 2 and 1, or the candidate counts differ.
        """
        logits = tf.convert_to_tensor(logits)
        log_q = tf.convert_to_tensor(log_q)
        if logits.shape.rank not in (None, 2) or log_q.shape.rank not in (None, 1):
            raise ValueError(
                f"Expected `logits` [batch, N] and `log_q` [N]. Received shapes {logits.shape} and {log_q.shape}"
            )
        if not logits.shape[-1:].is_compatible_with(log_q.shape[-1:]):
            raise ValueError(f"`logits` has {logits.shape[-1]} candidates but `log_q` has {log_q.shape[-1]}")
        return logits - tf.cast(log_q, logits.dtype)[tf.newaxis, :]
