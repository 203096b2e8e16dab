"""Export trained towers plus a retrieval index as one SavedModel version for TF Serving.

``<export_base>/<model_name>/<version>/`` holds three signatures on raw features:

* ``serving_default``: query features → ``candidate_ids [B, k]``, ``scores [B, k]``, best first
  (optionally without the ids of the request's history, still k of them);
* ``query_embedding``: query features → ``embedding [B, d]``;
* ``candidate_embedding``: candidate features → ``embedding [B, d]``;

and, under ``assets.extra/``, TF Serving's warm-up requests, ``tfrec_towers_metadata.json`` (what was
exported and how, and any warning such as a clamped ``k``) and ``verification_sample.json`` (raw query
rows with the in-memory model's outputs and their exact top-k over the whole corpus, so
:func:`tfrec_towers.verify.verify_export` can check the export, and measure its recall, in a fresh
process without this package).

One module a job:

* :mod:`~tfrec_towers.export.from_towers`: :func:`export_model` and :func:`export_retrieval_model`,
  the one-call exports of towers held in memory;
* :mod:`~tfrec_towers.export.signatures`: the exported object and the raw feature columns it takes;
* :mod:`~tfrec_towers.export.sample`: the verification sample;
* :mod:`~tfrec_towers.export.assembly`: one version's SavedModel, metadata and warm-up requests;
* :mod:`~tfrec_towers.export.publish`: versions, and writing one atomically (a hidden temporary
  sibling renamed into place, so a polling server never sees half a model).
"""

from tfrec_towers.export.assembly import (
    METADATA_FILENAME,
    METADATA_KEYS,
    NUM_WARMUP_ROWS,
    VERIFICATION_SAMPLE_FILENAME,
    write_export,
    write_retrieval_export,
)
from tfrec_towers.export.from_towers import export_model, export_retrieval_model, history_feature_name
from tfrec_towers.export.publish import MAX_PUBLISH_ATTEMPTS, target_directory
from tfrec_towers.export.sample import (
    NUM_SAMPLE_CANDIDATES,
    NUM_SAMPLE_QUERIES,
    NUM_SAMPLE_RETRIEVED,
    NUM_SCORED_QUERIES,
    features_to_json,
    sampled_candidate_positions,
    search_with_exact,
    to_json,
    verification_sample,
)
from tfrec_towers.export.signatures import (
    SIGNATURE_NAMES,
    Features,
    RetrievalExport,
    as_features,
    placeholder_features,
    specs_from_json,
    take_feature_rows,
)

__all__ = [
    "Features",
    "MAX_PUBLISH_ATTEMPTS",
    "METADATA_FILENAME",
    "METADATA_KEYS",
    "NUM_SAMPLE_CANDIDATES",
    "NUM_SAMPLE_QUERIES",
    "NUM_SAMPLE_RETRIEVED",
    "NUM_SCORED_QUERIES",
    "NUM_WARMUP_ROWS",
    "RetrievalExport",
    "SIGNATURE_NAMES",
    "VERIFICATION_SAMPLE_FILENAME",
    "as_features",
    "export_model",
    "export_retrieval_model",
    "features_to_json",
    "history_feature_name",
    "placeholder_features",
    "sampled_candidate_positions",
    "search_with_exact",
    "specs_from_json",
    "take_feature_rows",
    "target_directory",
    "to_json",
    "verification_sample",
    "write_export",
    "write_retrieval_export",
]
