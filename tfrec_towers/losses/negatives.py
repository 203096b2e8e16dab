"""The negative set: candidates scored against every query besides the in-batch ones.

Each negative source (the cross-batch memory bank, mixed negative sampling, the batch
itself) hands the loss the same four aligned tensors, so the loss concatenates sources
with :func:`concat_negative_sets` and applies one logQ correction and one validity mask
to all of them.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Sequence

import tensorflow as tf


class NegativeSet(NamedTuple):
    """Negatives from one source, row ``j`` of every field describing candidate ``y_j``.

    Attributes:
      embeddings: ``float32 [N, d]`` candidate embeddings (no gradient for stored ones).
      ids: ``int64 [N]`` or ``string [N]`` candidate ids (for accidental-hit removal).
      log_q: ``float32 [N]`` ``log p_j``, the log-probability with which one draw (one
        training example) is ``y_j``, the unit of
        :meth:`~tfrec_towers.losses.frequency.CandidateProbability.log_example_probability`;
        the loss turns it into the expected count of ``y_j`` among its negatives.
      valid: ``bool [N]`` False for empty slots (e.g. a memory bank not yet full); the
        loss must give those logits no probability mass.
    """

    embeddings: tf.Tensor
    ids: tf.Tensor
    log_q: tf.Tensor
    valid: tf.Tensor


def concat_negative_sets(sets: Sequence[NegativeSet]) -> NegativeSet:
    """Stacks several negative sets into one, in the given order.

    Args:
      sets: the negative sets; all with the same id dtype and embedding size.

    Returns:
      A :class:`NegativeSet` with ``N = Σ N_k`` rows: ``sets[0]``'s rows first.

    Raises:
      ValueError: if ``sets`` is empty, or the sets disagree on the id dtype or on the
        (static) embedding size.
    """
    if not sets:
        raise ValueError("`sets` must hold at least one NegativeSet. Received: []")
    id_dtypes = sorted({tf.as_dtype(s.ids.dtype).name for s in sets})
    if len(id_dtypes) > 1:
        raise ValueError(f"All negative sets must have the same `ids` dtype. Received: {id_dtypes}")
    dims = sorted({s.embeddings.shape[-1] for s in sets if s.embeddings.shape[-1] is not None})
    if len(dims) > 1:
        raise ValueError(f"All negative sets must have the same embedding size. Received: {dims}")
    return NegativeSet(*(tf.concat(list(field), axis=0) for field in zip(*sets)))


def check_int(field: str, value: Any, low: int) -> int:
    """Validates an integer hyper-parameter of a negative source.

    Args:
      field: the argument's name, quoted in the error.
      value: the received value.
      low: the smallest allowed value.

    Returns:
      ``value`` as a Python int.

    Raises:
      ValueError: naming ``field``, if ``value`` is not an int (``bool`` is rejected)
        ``>= low``.
    """
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"`{field}` must be {kind}. Received: {value!r}")
    return int(value)
