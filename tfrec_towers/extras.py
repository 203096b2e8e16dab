"""Optional dependencies: which feature needs which extra of the ``tfrec-towers`` distribution.

Training, evaluation, export (with its TF Serving warm-up records) and verification need only the
core requirements. Four features need more, each installed by one extra:

==========  ================  =========================================================================
extra       installs          needed by
==========  ================  =========================================================================
``beam``    ``apache-beam``   the batch embedding job (``tfrec-towers embed``, :mod:`tfrec_pipelines.embed_job`)
                              and indexing its output (``tfrec-towers index-embeddings``)
``report``  ``matplotlib``    the HTML run report (``tfrec-towers report``, ``compare --output``) and
                              the recall/QPS plot of ``tfrec-towers tune-index`` (``tune`` skips its
                              search.png without it, and says so)
``serving`` ``grpcio``        the gRPC calls of the example client ``serving/client.py``
``tune``    ``optuna``        the hyper-parameter search (``tfrec-towers tune``, :mod:`tfrec_pipelines.search`)
==========  ================  =========================================================================

A module that needs an extra imports it inside ``try`` and turns the failure into
:class:`MissingExtraError` with :func:`missing_extra`, so the user reads which ``pip install`` fixes it::

    try:
        import apache_beam as beam
    except ModuleNotFoundError as e:
        raise missing_extra("beam", "The batch embedding job", e) from e
"""

from __future__ import annotations

EXTRAS = {"beam": "apache-beam", "report": "matplotlib", "serving": "grpcio", "tune": "optuna"}
"""``{extra: the distribution it installs}`` (``setup.cfg``'s ``[options.extras_require]``)."""


class MissingExtraError(ImportError):
    """A feature needs an optional dependency that is not installed; the message names the extra."""


def missing_extra(extra: str, feature: str, error: ImportError) -> MissingExtraError:
    """The error to raise when ``feature`` cannot import what ``extra`` installs.

    Args:
      extra: a key of :data:`EXTRAS` (``"beam"``).
      feature: what needs it, capitalised, for the message (``"The batch embedding job"``).
      error: the import's failure (its message ends the new one).

    Returns:
      A :class:`MissingExtraError` saying ``pip install 'tfrec-towers[<extra>]'``.

    Raises:
      KeyError: ``extra`` is not one of :data:`EXTRAS`.
    """
    return MissingExtraError(
        f"{feature} needs {EXTRAS[extra]} ({error}). Install it with: pip install 'tfrec-towers[{extra}]'",
        name=error.name,
    )
