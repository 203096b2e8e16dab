"""A seeded synthetic retrieval data set with the structure of real interaction logs.

Items have unit latent vectors clustered by ``category`` and a Zipf popularity
``pop_i ∝ rank_i^(-s)``; users have a unit taste vector clustered by ``country``. Each
user consumes ``interactions_per_user`` distinct items in sequence, each drawn from

    p(i | taste_t) ∝ exp(taste_t · v_i / τ + log pop_i),

and the taste drifts toward every consumed item, ``taste_{t+1} = normalise((1 - α)
taste_t + α v_{i_t} + noise)``, so recent history carries signal beyond the user's
features. :func:`synthetic_tables` gives the interaction, user and item tables, which take the
same path as a user's own tables (:mod:`tfrec_pipelines.interactions`); :func:`make_synthetic` splits
them by the leave-last-out protocol (docs/contracts.md).

Sampling is sampling-importance-resampling: per step, each group of ``_GROUP_SIZE`` users
shares ``_NUM_PROPOSALS`` items drawn from a proposal ``q`` (popularity mixed with 10%
uniform), and each user picks one with the Gumbel-max trick on the importance-corrected
logits ``taste · v / τ + log pop - log q`` (an already consumed pick is masked and the
next best taken). Memory is ``O(num_items · embedding_dim)`` plus a bounded chunk of
users × proposals, never ``users × items``, so a catalogue of 1,000,000 items is cheap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tfrec_pipelines.data import RetrievalData
from tfrec_pipelines.interactions import InteractionTables, interaction_data
from tfrec_towers.progress import progress

COUNTRIES = ("US", "BR", "DE", "FR", "GB", "IN", "JP", "MX", "NG", "KR")
NUM_CATEGORIES = 20
_TEMPERATURE = 0.2  # τ
_TASTE_DRIFT = 0.2  # α
_TASTE_NOISE = 0.1
_UNIFORM_PROPOSAL_SHARE = 0.1
_NUM_PROPOSALS = 512
_GROUP_SIZE = 32  # users sharing one set of proposals
_CHUNK_ELEMENTS = 1 << 22  # users per chunk × proposals stays below this


def make_synthetic(
    num_items: int = 5000,
    num_users: int = 2000,
    interactions_per_user: int = 30,
    max_history: int = 50,
    embedding_dim: int = 16,
    zipf_exponent: float = 1.1,
    seed: int = 0,
) -> RetrievalData:
    """The synthetic tables (:func:`synthetic_tables`) split by the leave-last-out protocol (docs/contracts.md).

    Returns:
      The split. Query features: ``user_id`` int64, ``age`` int64, ``country`` string,
      ``history`` int64 ``[N, L]``; candidate features: ``item_id`` int64, ``category``
      string (``"category_07"``, clustered in the latent space).

    Raises:
      ValueError: an argument out of range (the message names it).
    """
    if isinstance(max_history, bool) or not isinstance(max_history, (int, np.integer)) or max_history < 1:
        raise ValueError(f"`max_history` must be a positive int. Received: {max_history!r}")
    tables = synthetic_tables(num_items, num_users, interactions_per_user, embedding_dim, zipf_exponent, seed)
    return interaction_data(tables, max_history=max_history)


def synthetic_tables(
    num_items: int = 5000,
    num_users: int = 2000,
    interactions_per_user: int = 30,
    embedding_dim: int = 16,
    zipf_exponent: float = 1.1,
    seed: int = 0,
) -> InteractionTables:
    """Generates the data set's tables (deterministic for given arguments).

    Args:
      num_items: catalogue size; item ids are ``1..num_items``.
      num_users: number of users; user ids are ``1..num_users``.
      interactions_per_user: distinct items each user consumes, ``2 <= n <= num_items``.
      embedding_dim: dimension of the latent user and item vectors.
      zipf_exponent: ``s`` of the popularity ``rank^(-s)``; 0 is uniform.
      seed: the random seed.

    Returns:
      Interactions (``user_id``, ``item_id``, ``timestamp`` = position in the user's sequence),
      users (``user_id``, ``age``, ``country``) and items (``item_id``, ``category``).

    Raises:
      ValueError: an argument out of range (the message names it).
    """
    for name, value in (
        ("num_items", num_items),
        ("num_users", num_users),
        ("embedding_dim", embedding_dim),
        ("interactions_per_user", interactions_per_user),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int. Received: {value!r}")
    if not 2 <= interactions_per_user <= num_items:
        raise ValueError(
            f"`interactions_per_user` must be between 2 and `num_items` ({num_items}): each user consumes "
            f"distinct items and needs one to train on and one to test. Received: {interactions_per_user}"
        )
    if not isinstance(zipf_exponent, (int, float)) or isinstance(zipf_exponent, bool) or not zipf_exponent >= 0:
        raise ValueError(f"`zipf_exponent` must be a non-negative float. Received: {zipf_exponent!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an int. Received: {seed!r}")

    rng = np.random.default_rng(seed)
    category = rng.integers(NUM_CATEGORIES, size=num_items)
    category_centres = _normalise(rng.normal(size=(NUM_CATEGORIES, embedding_dim)))
    item_vectors = _normalise(
        category_centres[category] + 0.7 * rng.normal(size=(num_items, embedding_dim)) / np.sqrt(embedding_dim)
    ).astype(np.float32)
    log_popularity = -zipf_exponent * np.log1p(rng.permutation(num_items))
    popularity = np.exp(log_popularity - log_popularity.max())
    proposal = (1 - _UNIFORM_PROPOSAL_SHARE) * popularity / popularity.sum() + _UNIFORM_PROPOSAL_SHARE / num_items
    log_weight = (log_popularity - np.log(proposal)).astype(np.float32)

    country = rng.integers(len(COUNTRIES), size=num_users)
    country_centres = _normalise(rng.normal(size=(len(COUNTRIES), embedding_dim)))
    tastes = _normalise(
        country_centres[country] + rng.normal(size=(num_users, embedding_dim)) / np.sqrt(embedding_dim)
    ).astype(np.float32)
    age = rng.integers(18, 75, size=num_users)

    sampler = _Sampler(item_vectors, log_weight, np.cumsum(proposal), rng)
    chunk = max(1, _CHUNK_ELEMENTS // _NUM_PROPOSALS)
    chunks = []
    with progress("Sampling synthetic interactions", total=num_users, unit="users") as bar:
        for start in range(0, num_users, chunk):
            chunks.append(sampler.sequences(tastes[start : start + chunk], interactions_per_user))
            bar.update(len(chunks[-1]))
    consumed = np.concatenate(chunks)

    category_names = np.array([f"category_{k:02d}" for k in range(NUM_CATEGORIES)], dtype=object)
    return InteractionTables(
        name=f"synthetic-{num_items}",
        interactions=pd.DataFrame(
            {
                "user_id": np.repeat(np.arange(1, num_users + 1, dtype=np.int64), interactions_per_user),
                "item_id": consumed.ravel() + 1,
                "timestamp": np.tile(np.arange(interactions_per_user, dtype=np.int64), num_users),
            }
        ),
        users=pd.DataFrame(
            {
                "user_id": np.arange(1, num_users + 1, dtype=np.int64),
                "age": age.astype(np.int64),
                "country": pd.Series(np.array(COUNTRIES, dtype=object)[country], dtype=object),
            }
        ),
        items=pd.DataFrame(
            {
                "item_id": np.arange(1, num_items + 1, dtype=np.int64),
                "category": pd.Series(category_names[category], dtype=object),
            }
        ),
        sources={
            "interactions": "the synthetic interactions",
            "users": "the synthetic users",
            "items": "the synthetic items",
        },
    )


class _Sampler:
    """Draws each user's sequence of distinct items (see the module docstring)."""

    def __init__(
        self, item_vectors: np.ndarray, log_weight: np.ndarray, proposal_cdf: np.ndarray, rng: np.random.Generator
    ):
        self._item_vectors = item_vectors
        self._log_weight = log_weight
        self._proposal_cdf = proposal_cdf
        self._rng = rng

    def sequences(self, tastes: np.ndarray, length: int) -> np.ndarray:
        """``int64 [users, length]`` 0-based item indices, distinct per user.

        Args:
          tastes: ``[users, dim]`` the users' initial unit taste vectors.
          length: the number of items per user.
        """
        consumed = np.zeros((len(tastes), length), np.int64)
        for step in range(length):
            consumed[:, step] = self._draw(tastes, consumed[:, :step])
            drifted = (1 - _TASTE_DRIFT) * tastes + _TASTE_DRIFT * self._item_vectors[consumed[:, step]]
            noise = _TASTE_NOISE * self._rng.standard_normal(tastes.shape, np.float32) / np.sqrt(tastes.shape[1])
            tastes = _normalise(drifted + noise)
        return consumed

    def _draw(self, tastes: np.ndarray, consumed: np.ndarray) -> np.ndarray:
        """One item per user, not among its ``consumed`` ones: ``int64 [users]``."""
        chosen = np.full(len(tastes), -1, np.int64)
        pending = np.arange(len(tastes))
        while len(pending):
            chosen[pending] = self._draw_from_proposals(tastes[pending], consumed[pending])
            pending = pending[chosen[pending] < 0]
        return chosen

    def _draw_from_proposals(self, tastes: np.ndarray, consumed: np.ndarray) -> np.ndarray:
        """Like :meth:`_draw`, but -1 for a user whose proposals were all consumed.

        Groups of ``_GROUP_SIZE`` users share ``_NUM_PROPOSALS`` proposals, so a group's
        logits are one matrix product ``[group, dim] @ [dim, proposals]``.
        """
        num_users, dim = tastes.shape
        num_groups = -(-num_users // _GROUP_SIZE)
        group = np.arange(num_users) // _GROUP_SIZE
        draws = self._rng.random((num_groups, _NUM_PROPOSALS)) * self._proposal_cdf[-1]
        proposals = np.minimum(np.searchsorted(self._proposal_cdf, draws, side="right"), len(self._proposal_cdf) - 1)
        grouped = np.zeros((num_groups * _GROUP_SIZE, dim), tastes.dtype)
        grouped[:num_users] = tastes
        logits = (
            np.matmul(grouped.reshape(num_groups, _GROUP_SIZE, dim), self._item_vectors[proposals].transpose(0, 2, 1))
            / _TEMPERATURE
        )
        logits = (logits + self._log_weight[proposals][:, None, :]).reshape(-1, _NUM_PROPOSALS)[:num_users]
        exponential = self._rng.standard_exponential(logits.shape, dtype=np.float32)
        logits -= np.log(np.maximum(exponential, np.finfo(np.float32).tiny))  # + Gumbel(0, 1) noise

        rows = np.arange(num_users)
        chosen = np.full(num_users, -1, np.int64)
        while len(rows):
            best = np.argmax(logits[rows], axis=1)
            available = np.isfinite(logits[rows, best])
            rows, best = rows[available], best[available]
            items = proposals[group[rows], best]
            repeated = (consumed[rows] == items[:, None]).any(axis=1)
            chosen[rows[~repeated]] = items[~repeated]
            rows, items = rows[repeated], items[repeated]
            masked = logits[rows]
            masked[proposals[group[rows]] == items[:, None]] = -np.inf
            logits[rows] = masked
        return chosen


def _normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
