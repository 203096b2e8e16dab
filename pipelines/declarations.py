"""Feature declarations of a data set: given in the configuration, or inferred from its tables.

Left out of the configuration, the towers' features are inferred: the query tower reads the user
id, the history and every column of the users table; the candidate tower the item id and every
column of the items table. The inferred user id keeps an embedding of its own only for users with
at least :data:`USER_ID_MIN_COUNT` training examples; rarer users share its out-of-vocabulary
embedding and are told apart by their history and attributes. (An embedding per user learnt from a
handful of interactions memorises those items, which evaluation filters out as already seen: on
the Amazon Toys log, where most users have 5 to 10 interactions, it cut HR@10 by a third.) Each
attribute column's kind comes from its type and cardinality:

==============================================  ==============================================
column                                          inferred kind
==============================================  ==============================================
integers, at most 1,000 distinct values and     ``categorical`` (an age, a year, a category
at most 10% of the rows distinct                code)
other integers, floats                          ``numeric``, standardised (``log1p`` first when
                                                non-negative and heavy-tailed: p99 > 10 × median)
text holding the separator ``|`` in ≥ 5% of     ``multi_valued`` (``"Action|Comedy"``)
its non-empty values; list columns
text with more than 1,000 distinct values,      ``hashed`` (no vocabulary; ~2 bins per value)
over half of the rows distinct
other text                                      ``categorical``
==============================================  ==============================================

:func:`feature_spec` turns the declarations into the :class:`~tfrec_towers.features.FeatureSpec`
that the towers, training and export share; :func:`rename_columns` gives the data set's columns
the features' names.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Literal, Mapping, Optional, Sequence, Tuple, TypedDict

import numpy as np
import pandas as pd

from tfrec_pipelines.data import DataError, RetrievalData, TrainingExamples
from tfrec_towers.data_config import FeatureDeclaration
from tfrec_towers.features import (
    BucketizedFeature,
    CategoricalFeature,
    Feature,
    FeatureSpec,
    HashedFeature,
    NumericFeature,
    Pooling,
    SequenceFeature,
)

logger = logging.getLogger(__name__)

MAX_CATEGORICAL_INTEGERS = 1000
MULTI_VALUED_SHARE = 0.05
HASHED_MIN_DISTINCT = 1000
HISTORY = "history"
USER_ID_MIN_COUNT = 20
"""Training examples a user needs for the inferred user id to give it an embedding of its own."""


@dataclasses.dataclass(frozen=True)
class Declarations:
    """The declared features of each tower and the id columns they key on."""

    query: Tuple[FeatureDeclaration, ...]
    candidate: Tuple[FeatureDeclaration, ...]

    def as_config(self) -> Dict[str, list]:
        """``{"query": [...], "candidate": [...]}`` as ``features.query`` / ``features.candidate`` are
        written: each declaration's name, kind and the fields it sets to other than their defaults."""
        defaults = FeatureDeclaration(name="_")

        def written(declaration: FeatureDeclaration) -> Dict[str, object]:
            values = dataclasses.asdict(declaration)
            return {k: v for k, v in values.items() if k in ("name", "kind") or v != getattr(defaults, k)}

        return {side: [written(d) for d in getattr(self, side)] for side in ("query", "candidate")}


def infer_column(name: str, values: np.ndarray, separator: str = "|") -> FeatureDeclaration:
    """The declaration of an attribute column inferred from its values (see the module table)."""
    values = np.asarray(values)
    distinct = len(np.unique(values)) if len(values) else 0
    if values.dtype.kind in "iub":
        if distinct <= MAX_CATEGORICAL_INTEGERS and distinct <= max(0.1 * len(values), 2):
            return FeatureDeclaration(name=name, kind="categorical")
        return _numeric(name, values.astype(np.float64))
    if values.dtype.kind == "f":
        return _numeric(name, values.astype(np.float64))
    text = values.astype(str)
    present = text[text != ""]
    if len(present) and np.mean(np.char.find(present.astype(str), separator) >= 0) >= MULTI_VALUED_SHARE:
        return FeatureDeclaration(name=name, kind="multi_valued", separator=separator)
    if distinct > HASHED_MIN_DISTINCT and distinct > 0.5 * len(values):
        bins = int(2 ** np.ceil(np.log2(2 * distinct)))
        return FeatureDeclaration(name=name, kind="hashed", num_bins=min(bins, 2**22))
    return FeatureDeclaration(name=name, kind="categorical")


def _numeric(name: str, values: np.ndarray) -> FeatureDeclaration:
    finite = values[np.isfinite(values)]
    heavy = len(finite) > 0 and finite.min() >= 0 and np.percentile(finite, 99) > 10 * max(np.median(finite), 1e-12)
    return FeatureDeclaration(name=name, kind="numeric", log1p=bool(heavy))


def infer_declarations(
    data: RetrievalData, user_column: str, user_attributes: Sequence[str], item_attributes: Sequence[str]
) -> Declarations:
    """The query tower: user id (``min_count`` :data:`USER_ID_MIN_COUNT`), history, every users-table
    column; the candidate tower: item id, every items-table column; each logged with its inferred kind."""
    user_id = FeatureDeclaration(name=user_column, kind="id", min_count=USER_ID_MIN_COUNT)
    query = [user_id, FeatureDeclaration(name=HISTORY, kind="history")]
    query += [infer_column(c, data.eval_queries[c]) for c in user_attributes]
    candidate = [FeatureDeclaration(name=data.candidate_id, kind="id")]
    candidate += [infer_column(c, data.candidates[c]) for c in item_attributes]
    declarations = Declarations(tuple(query), tuple(candidate))
    for side in ("query", "candidate"):
        logger.info("Inferred %s features: %s", side, ", ".join(_describe(d) for d in getattr(declarations, side)))
    if user_column in data.train:
        counts = pd.Series(np.asarray(data.train[user_column])).value_counts(sort=False).to_numpy()  # hashed, no sort
        logger.info(
            "%s: %s of %s users have at least %d training examples and an embedding of their own; the others share "
            "the out-of-vocabulary one (declare `{name: %s, kind: id, min_count: 1}` to give every user one).",
            user_column,
            f"{int(np.sum(counts >= USER_ID_MIN_COUNT)):,}",
            f"{len(counts):,}",
            USER_ID_MIN_COUNT,
            user_column,
        )
    return declarations


def _describe(declaration: FeatureDeclaration) -> str:
    extra = {
        "hashed": f", {declaration.num_bins} bins",
        "numeric": ", log1p" if declaration.log1p else "",
        "id": f", min_count {declaration.min_count}" if declaration.min_count > 1 else "",
    }
    return f"{declaration.name} ({declaration.kind}{extra.get(declaration.kind, '')})"


def feature_spec(
    declarations: Declarations,
    data: RetrievalData,
    *,
    embedding_dim: int,
    num_oov_buckets: int,
    history_pooling: Pooling,
    share_item_embeddings: bool,
) -> FeatureSpec:
    """The (not yet adapted) feature specification of the declarations on ``data``.

    The item ``id`` of the candidate tower is the candidate id; the ``history`` reads the same
    embedding table when ``share_item_embeddings``. A feature's dtype is its column's.

    Raises:
      DataError: a declaration reads a column the data set does not have, a kind does not fit
        the column's type, or the candidate tower has no ``id`` feature of the item column.
    """
    item_id = data.candidate_id
    candidate_ids = [d for d in declarations.candidate if d.kind == "id"]
    if len(candidate_ids) != 1 or item_id not in (candidate_ids[0].source, candidate_ids[0].name):
        raise DataError(
            f"The candidate features must hold exactly one `kind: id` feature reading the item column {item_id!r}; "
            f"declared: {[(d.name, d.kind, d.source) for d in declarations.candidate]}."
        )
    item_name = candidate_ids[0].name
    item_dtype = _dtype_of(data.candidates[item_id])

    def build(declaration: FeatureDeclaration, side: str) -> Feature:
        dim = declaration.embedding_dim or embedding_dim
        oov = declaration.num_oov_buckets or num_oov_buckets
        vocabulary = _VocabularyArguments(
            num_oov_buckets=oov, min_count=declaration.min_count, max_vocabulary_size=declaration.max_vocabulary_size
        )
        if declaration.kind == "history":
            if side != "query":
                raise DataError(f"Feature {declaration.name!r}: `kind: history` belongs to the query tower.")
            if item_dtype == "float32":
                raise DataError(
                    f"Feature {declaration.name!r}: `kind: history` reads item ids, but the item column "
                    f"{item_id!r} holds floats; item ids are integers or text."
                )
            return SequenceFeature(
                declaration.name,
                dtype=item_dtype,
                embedding_dim=dim,
                pooling=history_pooling,
                separator=None if item_dtype == "string" else "|",  # a [B, L] matrix either way
                embedding_table=item_name if share_item_embeddings else None,
                **vocabulary,
            )
        values = _column(data, declaration, side)
        dtype = _dtype_of(values)
        if declaration.kind == "numeric":
            if dtype == "string":
                raise DataError(f"Feature {declaration.name!r}: column {declaration.source!r} holds text, not numbers.")
            return NumericFeature(declaration.name, dtype=dtype, log1p=declaration.log1p)
        if declaration.kind == "bucketized":
            if dtype == "string":
                raise DataError(f"Feature {declaration.name!r}: column {declaration.source!r} holds text, not numbers.")
            return BucketizedFeature(
                declaration.name,
                dtype=dtype,
                num_buckets=declaration.num_buckets,
                embedding_dim=dim,
                boundaries=declaration.boundaries,
            )
        if dtype == "float32":
            raise DataError(
                f"Feature {declaration.name!r}: `kind: {declaration.kind}` needs integers or text, but column "
                f"{declaration.source!r} holds floats; declare it `kind: numeric`."
            )
        if declaration.kind == "hashed":
            return HashedFeature(declaration.name, num_bins=declaration.num_bins, dtype=dtype, embedding_dim=dim)
        if declaration.kind == "multi_valued":
            if dtype != "string":
                raise DataError(f"Feature {declaration.name!r}: `kind: multi_valued` needs a text column.")
            return SequenceFeature(
                declaration.name,
                dtype="string",
                embedding_dim=dim,
                pooling="mean",
                separator=declaration.separator,
                **vocabulary,
            )
        return CategoricalFeature(declaration.name, dtype=dtype, embedding_dim=dim, **vocabulary)

    return FeatureSpec(
        query=tuple(build(d, "query") for d in declarations.query),
        candidate=tuple(build(d, "candidate") for d in declarations.candidate),
        candidate_id=item_name,
    )


def _column(data: RetrievalData, declaration: FeatureDeclaration, side: str) -> np.ndarray:
    table = data.eval_queries if side == "query" else data.candidates
    if declaration.source not in table:
        what = "users table (or the user id)" if side == "query" else "items table (or the item id)"
        raise DataError(
            f"Feature {declaration.name!r} reads column {declaration.source!r}, which is not a column of the {what}; "
            f"the {side} side has {sorted(c for c in table if c != HISTORY)}."
        )
    return np.asarray(table[declaration.source])


class _VocabularyArguments(TypedDict):
    """The vocabulary fields every looked-up feature (id, categorical, multi-valued, history) takes."""

    num_oov_buckets: int
    min_count: int
    max_vocabulary_size: Optional[int]


def _dtype_of(values: np.ndarray) -> Literal["int64", "float32", "string"]:
    kind = np.asarray(values).dtype.kind
    return "int64" if kind in "iub" else "float32" if kind == "f" else "string"


def rename_columns(data: RetrievalData, declarations: Declarations) -> RetrievalData:
    """``data`` with the columns the declarations read also available under the features' names."""
    renames: Dict[str, Mapping[str, str]] = {
        "query": {d.name: d.source for d in declarations.query if d.kind != "history" and d.name != d.source},
        "candidate": {d.name: d.source for d in declarations.candidate if d.name != d.source},
    }
    if not any(renames.values()):
        return data

    def renamed(table: Mapping[str, np.ndarray], mapping: Mapping[str, str]) -> Dict[str, np.ndarray]:
        return {**table, **{name: table[source] for name, source in mapping.items() if source in table}}

    both = {**renames["query"], **renames["candidate"]}
    return dataclasses.replace(
        data,
        train=TrainingExamples.of(renamed(data.train, both)),
        eval_queries=renamed(data.eval_queries, renames["query"]),
        candidates=renamed(data.candidates, renames["candidate"]),
        candidate_id=next((d.name for d in declarations.candidate if d.kind == "id"), data.candidate_id),
    )


def declarations_from_config(
    query: Optional[Sequence[FeatureDeclaration]],
    candidate: Optional[Sequence[FeatureDeclaration]],
    inferred: Declarations,
) -> Declarations:
    """The configured declarations of each tower, or the inferred ones where a tower has none."""
    return Declarations(
        tuple(query) if query else inferred.query,
        tuple(candidate) if candidate else inferred.candidate,
    )
