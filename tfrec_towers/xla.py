"""XLA-compiled calls of the numeric parts of a training step (``training.jit_compile``).

A two-tower step cannot be compiled whole (Keras's ``compile(jit_compile=True)``): the id lookups
(``StringLookup``, hashing) and the loss's hash tables have no XLA kernels. Its numeric parts can —
a tower's MLP head and history encoder, the loss's mode over the logits — and :func:`compiled`
gives one ``tf.function(jit_compile=True)`` per object and method, traced with relaxed shapes
(``reduce_retracing``) and compiled by XLA once per shape met. Their gradients are compiled too;
the embedding rows are gathered outside, so the tables' gradients stay sparse.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict

import tensorflow as tf

_COMPILED: "weakref.WeakKeyDictionary[Any, Dict[str, Callable[..., Any]]]" = weakref.WeakKeyDictionary()


def compiled(owner: Any, method: str) -> Callable[..., Any]:
    """``owner.<method>`` as an XLA-compiled ``tf.function``, one per ``(owner, method)``, reused.

    The function holds ``owner`` weakly (it is not an attribute of it, so checkpoints and
    SavedModels of ``owner`` are unchanged) and reads the method at each trace. Variables the call
    creates (a layer built at its first call) are created at the first trace, as in any ``tf.function``.
    """
    functions = _COMPILED.setdefault(owner, {})
    if method not in functions:
        reference = weakref.ref(owner)

        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(reference(), method)(*args, **kwargs)

        functions[method] = tf.function(call, jit_compile=True, reduce_retracing=True, autograph=False)
    return functions[method]
