"""Follow-up to the batch embedding job: index its ``id, embedding`` output and export it for TF Serving.

:func:`build_index_export` reads the embeddings an :mod:`tfrec_pipelines.embed_job` run wrote (Parquet,
``.npy`` or TFRecord shards listed in the output's manifest), builds the retrieval index over them
with :func:`tfrec_towers.index.build_index`, and writes a new SavedModel version whose towers are
those of an existing export (its ``query_embedding`` and ``candidate_embedding`` signatures), so
the corpus reaches this process only as embeddings, never as features. The version has the layout,
signatures, warm-up requests and metadata of :func:`tfrec_towers.export.export_retrieval_model`
(docs/contracts.md); its verification sample reuses the source export's sample queries and candidate rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pa_dataset
import pyarrow.parquet as pq
import tensorflow as tf

from tfrec_towers.extras import missing_extra

try:
    from apache_beam.io.filesystems import FileSystems
except ModuleNotFoundError as e:
    raise missing_extra("beam", "Indexing an embedding job's output", e) from e

from tfrec_pipelines import embed_output
from tfrec_pipelines.candidate_table import read_candidate_table
from tfrec_towers import export
from tfrec_towers.index import INDEX_KINDS, IndexConfig, build_index


class SignatureTower(tf.Module):
    """A tower of a loaded export: ``features → embedding [batch, dim]`` through one of its signatures.

    Only ``owner`` (the loaded tower whose variables the signature reads) is tracked, so re-saving
    does not copy the source export's index.
    """

    def __init__(self, function: Any, owner: tf.Module) -> None:
        super().__init__(name="signature_tower")
        self.owner = owner
        self._function = function

    def __call__(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self._function(**features)["embedding"]


def read_embeddings(output: str) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """All ids and embeddings of an embedding output, from its Parquet, else ``.npy``, else TFRecord shards.

    Returns:
      ``(ids int64 or str [N], embeddings float32 [N, d], manifest spec)``.

    Raises:
      FileNotFoundError: no manifest, or no embedding shards listed in it.
    """
    parquet = embed_output.manifest_files(output, [".parquet"])
    spec = embed_output.finished_manifest(output)["spec"]
    npy = embed_output.manifest_files(output, [".npy"])
    tfrecord = embed_output.manifest_files(output, [".tfrecord"])
    id_column, dim = spec["id_column"], spec["embedding_dim"]
    if parquet:
        tables = [pq.read_table(path) for path in parquet]
        ids = np.concatenate([t.column(id_column).to_numpy(zero_copy_only=False) for t in tables])
        values = [t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False) for t in tables]
        embeddings = np.concatenate(values).reshape(-1, dim)
    elif npy:
        names = [Path(p).name for p in npy]
        shards = sorted(n[len("ids-") :] for n in names if n.startswith("ids-"))
        directory = str(Path(npy[0]).parent)
        ids = np.concatenate([np.load(f"{directory}/ids-{s}") for s in shards])
        embeddings = np.concatenate([np.load(f"{directory}/embeddings-{s}") for s in shards])
    elif tfrecord:
        id_feature = tf.io.FixedLenFeature([], tf.int64 if spec["id_dtype"] == "int64" else tf.string)
        features = {id_column: id_feature, "embedding": tf.io.FixedLenFeature([dim], tf.float32)}
        parsed = [tf.io.parse_example(batch, features) for batch in tf.data.TFRecordDataset(tfrecord).batch(65536)]
        ids = np.concatenate([p[id_column].numpy() for p in parsed])
        embeddings = np.concatenate([p["embedding"].numpy() for p in parsed])
    else:
        raise FileNotFoundError(f"{output} lists no Parquet, .npy or TFRecord embedding shards in its manifest.")
    if spec["id_dtype"] == "string":
        ids = np.array([i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in ids], dtype=object)
    return ids, embeddings.astype(np.float32), spec


def _candidate_rows(
    paths: Sequence[str], candidate_spec: Dict[str, tf.TensorSpec], id_column: str, wanted: Sequence[Any]
) -> Dict[str, np.ndarray]:
    """The raw candidate rows whose id is in ``wanted`` (one per id), read from Parquet with a filter."""
    files = [m.path for result in FileSystems.match(list(paths)) for m in result.metadata_list]
    if not files:
        raise FileNotFoundError(f"No candidate feature file matches {list(paths)}.")
    table = pa_dataset.dataset(files, format="parquet").to_table(
        columns=list(candidate_spec), filter=pc.field(id_column).isin(list(wanted))
    )
    frame = table.to_pandas().drop_duplicates(id_column).reset_index(drop=True)
    return read_candidate_table(frame, candidate_spec)


def _read_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the source must be a tfrec-towers export version directory.")
    return json.loads(path.read_text())


def build_index_export(
    embeddings_dir: str,
    source_export: Union[str, Path],
    export_base: Union[str, Path],
    model_name: str,
    index: Optional[IndexConfig] = None,
    version: Optional[int] = None,
    candidate_features: Optional[Sequence[str]] = None,
) -> Path:
    """Indexes an embedding output and exports it with the towers of ``source_export``.

    Args:
      embeddings_dir: the output directory of :func:`tfrec_pipelines.embed_job.run_embed_job`
        (``candidate_embedding`` rows of the same towers).
      source_export: a version directory written by :func:`tfrec_towers.export.export_retrieval_model`.
      export_base: where ``<model_name>/<version>/`` is written (atomically).
      model_name: the model's directory name (TF Serving's model name).
      index: the index to build; default :meth:`IndexConfig.for_corpus` with the source export's ``k``.
      version: the version number; ``None`` = the next one (the next free one if a concurrent
        export publishes it first).
      candidate_features: the Parquet files (or globs) the embeddings were computed from. When given,
        the verification sample holds the raw rows of the first corpus candidates and of the sample
        queries' best candidates, with the job's embeddings (read with a filter on the id column, so
        only those rows are loaded); :func:`tfrec_towers.verify.verify_export` then checks the job's
        embeddings and the served scores against the candidate signature. Otherwise the sample reuses
        the source export's candidate rows, and a warning in the metadata says that the served scores
        cannot all be checked against them.

    Returns:
      The written version directory.

    Raises:
      FileNotFoundError: the embeddings or the source export's metadata are missing.
      ValueError: the embeddings' dimension or id column differ from the source export's, or the
        corpus is not indexable (repeated ids, non-finite values: :func:`tfrec_towers.index.build_index`).
    """
    source = Path(source_export)
    extra = source / "assets.extra"
    metadata = _read_json(extra / export.METADATA_FILENAME)
    sample = _read_json(extra / export.VERIFICATION_SAMPLE_FILENAME)
    manifest = embed_output.read_manifest(embeddings_dir)
    if manifest is None:
        raise FileNotFoundError(f"{embeddings_dir} has no {embed_output.MANIFEST}: no embedding job finished there.")
    spec = manifest["spec"]
    if spec["embedding_dim"] != metadata["embedding_dim"] or spec["id_column"] != metadata["candidate_id"]:
        raise ValueError(
            f"The embeddings in {embeddings_dir} (dim {spec['embedding_dim']}, id column {spec['id_column']!r}) "
            f"do not come from the towers of {source} (dim {metadata['embedding_dim']}, candidate id "
            f"{metadata['candidate_id']!r})."
        )
    ids, embeddings, _ = read_embeddings(embeddings_dir)
    next_free = version is None
    model_dir, version = export.target_directory(export_base, model_name, version)
    if metadata["index"]["kind"] == "scann" or (index is not None and index.kind == "scann"):
        from scann.scann_ops.py import scann_ops  # noqa: F401  (registers the ScaNN ops)
    loaded = tf.saved_model.load(str(source))
    query_model = SignatureTower(loaded.signatures["query_embedding"], loaded.query_model)
    candidate_model = SignatureTower(loaded.signatures["candidate_embedding"], loaded.candidate_model)
    query_spec = export.specs_from_json(metadata["query_input_spec"])
    candidate_spec = export.specs_from_json(metadata["candidate_input_spec"])
    retrieval_index = build_index(index or IndexConfig.for_corpus(len(ids), k=metadata["k"]), embeddings, ids)

    queries = export.as_features("source sample queries", sample["queries"], query_spec)
    candidates = export.as_features("source sample candidates", sample["candidates"], candidate_spec)
    query_embeddings = query_model(queries).numpy()
    corpus_ids = retrieval_index.candidate_ids.numpy()
    retrieved = export.search_with_exact(retrieval_index, query_embeddings, embeddings, corpus_ids)
    warnings = []
    if candidate_features:
        position = {identifier: row for row, identifier in enumerate(corpus_ids.tolist())}
        wanted = ids[export.sampled_candidate_positions(corpus_ids, retrieved[1])].tolist()
        candidates = _candidate_rows(candidate_features, candidate_spec, metadata["candidate_id"], wanted)
        found = candidates[metadata["candidate_id"]].tolist()
        rows = [position[i.encode("utf-8") if isinstance(i, str) else i] for i in found]
        candidate_embeddings = embeddings[rows]
    else:
        candidate_embeddings = candidate_model(candidates).numpy()
        warnings.append(
            "the verification sample's candidate rows come from the source export, not from the "
            "embedded corpus: pass `candidate_features` to check the corpus embeddings and scores."
        )
    verification = export.verification_sample(queries, query_embeddings, candidates, candidate_embeddings, retrieved)
    return export.write_retrieval_export(
        model_dir,
        version,
        model_name,
        query_model,
        candidate_model,
        retrieval_index,
        query_spec,
        candidate_spec,
        metadata["candidate_id"],
        verification,
        (queries, candidates),
        warnings=warnings,
        metadata={"embeddings_from": embeddings_dir, "towers_from": str(source)},
        next_free=next_free,
    )


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m tfrec_pipelines.index_from_embeddings") -> int:
    """CLI: ``python -m tfrec_pipelines.index_from_embeddings --embeddings DIR --towers VERSION_DIR --export-base DIR``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Index an embedding job's output and export it for TF Serving.",
        epilog=f"example:\n  {prog} --embeddings embeddings/movies --towers exports/movies/1 "
        "--export-base exports --model-name movies_full --index scann --candidate-features 'corpus/*.parquet'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--embeddings", required=True, help="output directory of tfrec_pipelines.embed_job")
    parser.add_argument("--towers", required=True, help="export version directory whose towers made the embeddings")
    parser.add_argument("--export-base", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument(
        "--index",
        choices=INDEX_KINDS,
        help="default: brute force up to 5,000 candidates, else ScaNN, with the source export's k",
    )
    parser.add_argument("--k", type=int, help="candidates per query, with --index (default: the source export's k)")
    parser.add_argument("--version", type=int)
    parser.add_argument(
        "--candidate-features",
        action="append",
        help="Parquet file or glob the embeddings came from (repeatable), for a checkable verification sample",
    )
    args = parser.parse_args(argv)
    if args.k is not None and args.index is None:
        parser.error("--k needs --index")
    source_k = _read_json(Path(args.towers) / "assets.extra" / export.METADATA_FILENAME)["k"]
    index = IndexConfig(kind=args.index, k=source_k if args.k is None else args.k) if args.index else None
    path = build_index_export(
        args.embeddings, args.towers, args.export_base, args.model_name, index, args.version, args.candidate_features
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
