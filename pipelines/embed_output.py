"""Output side of the batch embedding job: the output directory, its manifest and the shard formats.

An output directory accumulates the ``id, embedding`` shards of one or more job runs::

    <output>/_manifest.json                            what the directory holds (written last)
    <output>/embeddings-<run>-00000-of-00002.parquet   id, embedding (fixed-size list)
    <output>/embeddings-<run>-00000-of-00001.tfrecord  tf.train.Example {id, embedding (float_list)}
    <output>/embeddings-<run>-<shard>.npy + ids-<run>-<shard>.npy
    <output>/dead_letter-<run>-00000-of-00001.jsonl    rows that could not be embedded, with reasons

A run writes into ``<output>/.tmp-<run>/``; only when the pipeline has succeeded are its files
moved into ``<output>`` and listed in ``_manifest.json`` (replaced atomically). Readers use the
files the manifest lists, so a failed or running job is never half-visible. A later run into the
same directory (another slice of the corpus, or a re-run after a failure) must produce embeddings
of the same dimension and dtype and ids of the same dtype: :func:`check_output` refuses otherwise.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import uuid
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tfrec_towers.extras import missing_extra

try:
    import apache_beam as beam
    from apache_beam.io.filebasedsink import FileBasedSink
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
except ModuleNotFoundError as e:
    raise missing_extra("beam", "The batch embedding job's writers", e) from e

MANIFEST = "_manifest.json"
OUTPUT_FORMATS = ("parquet", "tfrecord", "npy")
EMBEDDING_DTYPES = ("float32", "float16")
ID_DTYPES = ("int64", "string")
NPY_SHARDS = "_npy_shards.json"
"""In the run's temporary directory: the ``.npy`` shards of committed bundles (retried bundles' are not)."""


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """What every run into one output directory must agree on.

    Attributes:
      embedding_dim: ``d`` of the ``embedding [n, d]`` column.
      embedding_dtype: ``"float32"`` or ``"float16"``.
      id_column: the name of the id column.
      id_dtype: ``"int64"`` or ``"string"``.
    """

    embedding_dim: int
    embedding_dtype: str
    id_column: str
    id_dtype: str

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EmbeddedChunk:
    """``ids [n]`` (int64, or ``str`` objects) and their ``embeddings [n, d]``."""

    ids: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def read_manifest(output: str) -> Optional[Dict[str, Any]]:
    """The parsed ``_manifest.json`` of an output directory, or None if there is none."""
    path = FileSystems.join(output, MANIFEST)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


def check_output(output: str, spec: OutputSpec) -> None:
    """Checks that a run writing ``spec`` may add to ``output`` (absent, or an output of the same spec).

    Raises:
      ValueError: if the existing output holds embeddings of another dimension or dtype, or ids of
        another column or dtype (the message names both).
      FileExistsError: if ``output`` exists, is not empty and has no manifest (not an embedding output).
    """
    manifest = read_manifest(output)
    if manifest is None:
        if FileSystems.exists(output):
            entries = [m.path for m in FileSystems.match([FileSystems.join(output, "*")])[0].metadata_list]
            if any(not p.rstrip("/").rsplit("/", 1)[-1].startswith(".tmp-") for p in entries):
                raise FileExistsError(
                    f"{output} exists and is not an embedding output (it has no {MANIFEST}): "
                    "choose a new output directory."
                )
        return
    existing = manifest["spec"]
    different = {key: (existing.get(key), value) for key, value in spec.to_dict().items() if existing.get(key) != value}
    if different:
        details = "; ".join(
            f"{key}: the output has {old!r}, this run writes {new!r}" for key, (old, new) in different.items()
        )
        raise ValueError(
            f"Cannot add to the embedding output {output}: {details}. Write to a new output directory, "
            "or use the same model and --embedding-dtype as the earlier runs."
        )


def arrow_schema(spec: OutputSpec) -> pa.Schema:
    """``id`` (int64 or string), ``embedding`` (fixed-size list of ``embedding_dim`` floats)."""
    id_type = pa.int64() if spec.id_dtype == "int64" else pa.string()
    value_type = pa.float16() if spec.embedding_dtype == "float16" else pa.float32()
    return pa.schema([(spec.id_column, id_type), ("embedding", pa.list_(value_type, spec.embedding_dim))])


PARQUET_WRITER_OPTIONS = {"use_dictionary": False, "compression": "snappy"}
"""Dictionary encoding is off: it cannot shrink unique ids and random floats, and costs 10x the write time."""


class _ParquetShard:
    def __init__(self, handle: Any, schema: pa.Schema) -> None:
        self.handle = handle
        self.writer = pq.ParquetWriter(handle, schema, **PARQUET_WRITER_OPTIONS)


class EmbeddingParquetSink(FileBasedSink):
    """Parquet shards of :func:`arrow_schema` tables (one row group per table), temp files renamed by Beam."""

    def __init__(self, file_path_prefix: str, schema: pa.Schema) -> None:
        super().__init__(
            file_path_prefix,
            coder=None,
            file_name_suffix=".parquet",
            mime_type="application/x-parquet",
            compression_type=CompressionTypes.UNCOMPRESSED,
        )
        self._schema = schema

    def open(self, temp_path: str) -> _ParquetShard:
        return _ParquetShard(super().open(temp_path), self._schema)

    def write_record(self, shard: _ParquetShard, table: pa.Table) -> None:
        shard.writer.write_table(table)

    def close(self, shard: _ParquetShard) -> None:
        shard.writer.close()
        shard.handle.close()


def to_arrow_table(chunk: EmbeddedChunk, schema: pa.Schema) -> pa.Table:
    """The chunk as a table of :func:`arrow_schema`."""
    embedding_type = schema.field("embedding").type
    values = pa.array(chunk.embeddings.reshape(-1), type=embedding_type.value_type)
    embeddings = pa.FixedSizeListArray.from_arrays(values, embedding_type.list_size)
    ids = pa.array(chunk.ids, type=schema.field(0).type)
    return pa.Table.from_arrays([ids, embeddings], schema=schema)


def to_examples(chunk: EmbeddedChunk, id_column: str) -> Iterator[bytes]:
    """One serialised ``tf.train.Example`` ``{id_column: int64/bytes, "embedding": float_list}`` per row."""
    import tensorflow as tf  # after tfrec_towers (imported by pipelines/__init__)

    for identifier, embedding in zip(chunk.ids.tolist(), chunk.embeddings.astype(np.float32)):
        if isinstance(identifier, str):
            id_feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[identifier.encode("utf-8")]))
        else:
            id_feature = tf.train.Feature(int64_list=tf.train.Int64List(value=[identifier]))
        feature = {id_column: id_feature, "embedding": tf.train.Feature(float_list=tf.train.FloatList(value=embedding))}
        yield tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _save_npy(path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    with FileSystems.create(path) as f:
        f.write(buffer.getvalue())


class WriteNpyShard(beam.DoFn):
    """Writes each chunk as ``embeddings-<run>-<shard>.npy`` ``[n, d]`` + ``ids-<run>-<shard>.npy`` ``[n]``.

    Yields the shard name; only names of committed bundles reach :data:`NPY_SHARDS`, so files left by
    a retried bundle are never moved into the output.
    """

    def __init__(self, directory: str, run: str) -> None:
        self._directory = directory
        self._run = run

    def process(self, chunk: EmbeddedChunk) -> Iterator[str]:
        shard = f"{self._run}-{uuid.uuid4().hex[:12]}"
        ids = chunk.ids.astype(str) if chunk.ids.dtype == object else chunk.ids
        _save_npy(FileSystems.join(self._directory, f"embeddings-{shard}.npy"), chunk.embeddings)
        _save_npy(FileSystems.join(self._directory, f"ids-{shard}.npy"), ids)
        yield shard


def write_npy_shard_list(shards: List[str], directory: str) -> None:
    """Records the committed ``.npy`` shards in ``<directory>/_npy_shards.json``."""
    with FileSystems.create(FileSystems.join(directory, NPY_SHARDS)) as f:
        f.write(json.dumps(sorted(shards)).encode("utf-8"))


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def finalize(output: str, tmp: str, run: str, spec: OutputSpec, run_record: Mapping[str, Any]) -> List[str]:
    """Moves a finished run's files from ``tmp`` into ``output`` and adds the run to the manifest.

    Args:
      output: the output directory.
      tmp: the run's temporary directory inside it.
      run: the run id (every file name of the run holds it).
      spec: the run's output spec (checked again against the manifest, in case another run finished first).
      run_record: JSON-ready facts about the run (model, inputs, counters) stored in the manifest.

    Returns:
      The names of the files added to ``output``.
    """
    check_output(output, spec)
    names = [_name(m.path) for m in FileSystems.match([FileSystems.join(tmp, f"*-{run}-*")])[0].metadata_list]
    names = [n for n in names if not n.endswith(".npy") and not n.startswith("beam-temp")]
    shard_list = FileSystems.join(tmp, NPY_SHARDS)
    if FileSystems.exists(shard_list):
        with FileSystems.open(shard_list) as f:
            shards = json.loads(f.read().decode("utf-8"))
        names += [f"{kind}-{shard}.npy" for shard in shards for kind in ("embeddings", "ids")]
    names.sort()
    if names:
        FileSystems.rename([FileSystems.join(tmp, n) for n in names], [FileSystems.join(output, n) for n in names])
    manifest = read_manifest(output) or {"spec": spec.to_dict(), "runs": []}
    manifest["runs"].append({**run_record, "run": run, "files": names, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    staged = FileSystems.join(output, f".{MANIFEST}-{run}")
    with FileSystems.create(staged) as f:
        f.write((json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    FileSystems.rename([staged], [FileSystems.join(output, MANIFEST)])
    FileSystems.delete([tmp])
    return names


def finished_manifest(output: str) -> Dict[str, Any]:
    """The parsed ``_manifest.json`` of an output directory a run has finished writing.

    Raises:
      FileNotFoundError: if ``output`` has no manifest (no finished run).
    """
    manifest = read_manifest(output)
    if manifest is None:
        raise FileNotFoundError(f"{output} has no {MANIFEST}: no embedding job has finished writing there.")
    return manifest


def manifest_files(output: str, suffixes: Sequence[str]) -> List[str]:
    """Paths of the files the manifest of ``output`` lists whose names end with one of ``suffixes``.

    Raises:
      FileNotFoundError: if ``output`` has no manifest (no finished run).
    """
    manifest = finished_manifest(output)
    names = [name for run in manifest["runs"] for name in run["files"] if name.endswith(tuple(suffixes))]
    return [FileSystems.join(output, name) for name in names]
