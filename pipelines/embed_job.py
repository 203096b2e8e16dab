"""Batch embedding export on Apache Beam: feature files → ``id, embedding`` shards.

    files ─► read units ─► Reshuffle ─► read + validate ─► BatchElements ─► embed ─┬─► Parquet
    (Parquet, CSV,                            │                        (signature;   ├─► TFRecord
     TFRecord)                                └──► dead letter ◄──────  model once  └─► .npy
                                                   (JSON lines)         per worker)

The SavedModel of a tfrec-towers export is loaded once per worker (``DoFn.setup``); rows are
embedded with its ``candidate_embedding`` or ``query_embedding`` signature, whose input spec
names the columns read and the type each value must have; a string input that the export's feature
spec declares multi-valued (``genres``, ``"Action|Comedy"``) also takes a list of strings, joined with
its declared separator. Rows that cannot be embedded (a missing value, a value the input cannot hold
exactly, an unparsable record, a non-finite embedding) and files that cannot be read, wherever they
come in the inputs, go to the dead letter with the reason (file, row, column, what was expected); they
never fail the job, unless no input file can be read at all. What each input accepts:
:mod:`tfrec_pipelines.embed_sources`. The counters ``rows_read``, ``rows_embedded``, ``rows_rejected`` and
``files_rejected`` (namespace ``tfrec_towers.embed_job``) are reported and stored in the output's
manifest; ``rows_read = rows_embedded + rows_rejected``. Output layout, atomicity and resumption:
:mod:`tfrec_pipelines.embed_output`. The follow-up step that indexes the embeddings:
:mod:`tfrec_pipelines.index_from_embeddings`.

DirectRunner by default; every argument this job does not define is a Beam pipeline option and is
passed on unchanged (``--runner DataflowRunner --project ... --region ...``, ``--direct_num_workers``,
Flink/Spark flags)::

    python -m tfrec_pipelines.embed_job --model exports/movies/1 --input 'corpus/part-*.parquet' \\
        --output embeddings/movies --format parquet --format npy
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import uuid
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, cast

import numpy as np
import tensorflow as tf

from tfrec_towers.extras import missing_extra

try:
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.utils import shared
except ModuleNotFoundError as e:
    raise missing_extra("beam", "The batch embedding job", e) from e

from tfrec_pipelines import embed_output, embed_sources
from tfrec_pipelines.candidate_table import column_types as reader_column_types
from tfrec_pipelines.embed_output import EMBEDDING_DTYPES, OUTPUT_FORMATS, EmbeddedChunk, OutputSpec
from tfrec_pipelines.embed_sources import DEAD_LETTER, METRICS_NAMESPACE, RowChunk
from tfrec_pipelines.formats import FILE_FORMATS as FORMATS
from tfrec_towers.features import IdDtype, SequenceFeature, feature_from_dict

logger = logging.getLogger(__name__)

SIGNATURES = ("candidate_embedding", "query_embedding")
COUNTERS = ("rows_read", "rows_embedded", "rows_rejected", "files_rejected")
DIRECT_RUNNER_DEFAULTS = ("--direct_running_mode=multi_threading", "--direct_num_workers=0")
"""Added by :func:`main` unless given: DirectRunner threads, one per core, overlap reading with the
signature calls and share one model (Beam's own default, one in-memory worker, ran at 0.22× the
direct rate in ``benchmarks/beam_embed.py``). Other runners ignore them."""
METADATA_PATH = ("assets.extra", "tfrec_towers_metadata.json")


@dataclasses.dataclass(frozen=True)
class EmbedJobConfig:
    """One embedding run, validated at construction.

    Attributes:
      model_dir: a SavedModel version directory of a tfrec-towers export (``<base>/<name>/<version>``).
      inputs: files or glob patterns of feature rows (local or any Beam file system).
      output: the output directory (see :mod:`tfrec_pipelines.embed_output`).
      signature: ``"candidate_embedding"`` or ``"query_embedding"``.
      input_format: ``"parquet"``, ``"csv"`` or ``"tfrecord"``; None = from each file's suffix.
      id_column: the column written beside each embedding; None = the export's candidate id
        (``candidate_embedding`` only).
      id_dtype: ``"int64"`` or ``"string"`` for an id column that is not a signature input
        (an input keeps the signature's dtype).
      output_formats: any of ``"parquet"``, ``"tfrecord"``, ``"npy"``.
      batch_size: rows per signature call (``beam.BatchElements`` batches up to this many rows).
      read_chunk_rows: rows per element leaving the reader (several make a batch).
      embedding_dtype: ``"float32"``, or ``"float16"`` to halve the output.
    """

    model_dir: str
    inputs: Tuple[str, ...]
    output: str
    signature: str = "candidate_embedding"
    input_format: Optional[str] = None
    id_column: Optional[str] = None
    id_dtype: str = "int64"
    output_formats: Tuple[str, ...] = ("parquet",)
    batch_size: int = 8192
    read_chunk_rows: int = 2048
    embedding_dtype: str = "float32"

    def __post_init__(self) -> None:
        choices = {
            "signature": (self.signature, SIGNATURES),
            "input_format": (self.input_format, FORMATS + (None,)),
            "id_dtype": (self.id_dtype, embed_output.ID_DTYPES),
            "embedding_dtype": (self.embedding_dtype, EMBEDDING_DTYPES),
        }
        for field, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"`{field}` must be one of {list(allowed)}. Received: {value!r}")
        if isinstance(self.inputs, str) or not self.inputs:
            raise ValueError(f"`inputs` must be a non-empty sequence of files or globs. Received: {self.inputs!r}")
        if not self.output_formats or any(f not in OUTPUT_FORMATS for f in self.output_formats):
            raise ValueError(
                f"`output_formats` must be a non-empty subset of {list(OUTPUT_FORMATS)}. "
                f"Received: {self.output_formats!r}"
            )
        for field in ("batch_size", "read_chunk_rows"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{field}` must be a positive int. Received: {value!r}")


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """What the launcher learns from the SavedModel.

    Attributes:
      input_specs: ``{input: tf.TensorSpec}`` of the signature.
      embedding_dim: ``d`` of its ``embedding [B, d]`` output.
      id_column: the column written beside each embedding.
      id_dtype: ``"int64"`` or ``"string"``.
      needs_scann: whether loading the export needs the ScaNN ops.
      separators: ``{string input: separator}`` of the inputs the export's feature spec declares
        multi-valued (``{"genres": "|"}``); empty when the export carries no feature spec.
    """

    input_specs: Dict[str, tf.TensorSpec]
    embedding_dim: int
    id_column: str
    id_dtype: IdDtype
    needs_scann: bool
    separators: Dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EmbedJobResult:
    """A finished run: the output directory, the run id, its files and the counters."""

    output: str
    run: str
    files: Tuple[str, ...]
    counters: Dict[str, int]


def _metadata(model_dir: str) -> Dict[str, Any]:
    path = FileSystems.join(model_dir, *METADATA_PATH)
    if not FileSystems.exists(path):
        return {}
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


def _load_signature(model_dir: str, signature: str, needs_scann: bool):
    if needs_scann:
        from scann.scann_ops.py import scann_ops  # noqa: F401  (registers the ScaNN ops the index needs)
    loaded = tf.saved_model.load(model_dir)
    if signature not in loaded.signatures:
        raise ValueError(f"{model_dir} has no signature {signature!r}; it has {sorted(loaded.signatures)}.")
    return loaded, loaded.signatures[signature]


def _separators(metadata: Mapping[str, Any], signature: str, specs: Mapping[str, tf.TensorSpec]) -> Dict[str, str]:
    """The separator of each ``string [None]`` input declared as a string :class:`SequenceFeature`.

    The declarations are the ``feature_spec`` a training run stores in the export's metadata; an
    export without it declares none.
    """
    side = "candidate" if signature == "candidate_embedding" else "query"
    features = [feature_from_dict(values) for values in metadata.get("feature_spec", {}).get(side, [])]
    return {
        f.name: f.separator
        for f in features
        if isinstance(f, SequenceFeature)
        and f.dtype == "string"
        and f.separator is not None
        and f.name in specs
        and specs[f.name].dtype == tf.string
        and specs[f.name].shape.rank == 1
    }


def describe_signature(config: EmbedJobConfig) -> SignatureInfo:
    """The signature's input spec and output dimension, the id column and its dtype, the separators.

    The spec and dimension come from the export's ``tfrec_towers_metadata.json`` (so the launcher
    need not load a large export); the SavedModel is loaded only for an export without it. The
    separators of multi-valued string inputs come from the feature spec in that metadata.

    Raises:
      ValueError: no such signature, no ``id_column`` for query embeddings, or a signature input
        that no file column can hold.
    """
    metadata = _metadata(config.model_dir)
    needs_scann = metadata.get("index", {}).get("kind") == "scann"
    spec_key = "candidate_input_spec" if config.signature == "candidate_embedding" else "query_input_spec"
    if spec_key in metadata and "embedding_dim" in metadata:  # no need to load a large export here
        specs = {
            name: tf.TensorSpec(s["shape"], tf.as_dtype(s["dtype"]), name=name)
            for name, s in metadata[spec_key].items()
        }
        embedding_dim = int(metadata["embedding_dim"])
    else:
        _, function = _load_signature(config.model_dir, config.signature, needs_scann)
        specs = dict(function.structured_input_signature[1])
        embedding_dim = int(function.structured_outputs["embedding"].shape[-1])
    id_column = config.id_column
    if id_column is None:
        if config.signature != "candidate_embedding" or "candidate_id" not in metadata:
            raise ValueError(
                f"`id_column` is required for {config.signature!r}: name the column written beside each "
                f"embedding (a signature input such as one of {sorted(specs)}, or another column of the files)."
            )
        id_column = metadata["candidate_id"]
    reader_column_types(specs)  # raises for a spec that no column type represents
    if id_column in specs:
        if specs[id_column].dtype not in (tf.int64, tf.string) or specs[id_column].shape.rank != 1:
            raise ValueError(f"The id column {id_column!r} must be an int64 or string input of shape [None].")
        id_dtype: IdDtype = "int64" if specs[id_column].dtype == tf.int64 else "string"
    else:
        id_dtype = cast(IdDtype, config.id_dtype)  # EmbedConfig checks it is one of embed_output.ID_DTYPES
    return SignatureInfo(
        specs, embedding_dim, id_column, id_dtype, needs_scann, _separators(metadata, config.signature, specs)
    )


def _concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenates row blocks; ``[n, L]`` list blocks are left-padded with 0 to the widest."""
    if arrays[0].ndim == 2:
        width = max(a.shape[1] for a in arrays)
        arrays = [np.pad(a, ((0, 0), (width - a.shape[1], 0))) for a in arrays]
    return np.concatenate(arrays)


class _LoadedSignature:
    """The loaded SavedModel and one of its signatures (a class, so ``Shared`` can hold a weak reference)."""

    def __init__(self, model_dir: str, signature: str, needs_scann: bool) -> None:
        self.model, self.function = _load_signature(model_dir, signature, needs_scann)
        self.specs = dict(self.function.structured_input_signature[1])


class EmbedBatches(beam.DoFn):
    """A batch of :class:`RowChunk` s → one :class:`EmbeddedChunk`; non-finite embeddings → dead letter.

    The SavedModel is loaded in :meth:`setup`, once per worker process: the threads of a worker
    (Dataflow runs several per process) share it through ``apache_beam.utils.shared.Shared``.
    """

    def __init__(self, model_dir: str, signature: str, needs_scann: bool, embedding_dtype: str) -> None:
        self._model_dir = model_dir
        self._signature = signature
        self._needs_scann = needs_scann
        self._embedding_dtype = np.dtype(embedding_dtype)
        self._shared = shared.Shared()
        self._rows_embedded = Metrics.counter(METRICS_NAMESPACE, "rows_embedded")
        self._rows_rejected = Metrics.counter(METRICS_NAMESPACE, "rows_rejected")

    def setup(self) -> None:
        self._loaded = self._shared.acquire(
            lambda: _LoadedSignature(self._model_dir, self._signature, self._needs_scann),
            tag=f"{self._model_dir}:{self._signature}",
        )

    def process(self, chunks: List[RowChunk]) -> Iterator[Any]:
        features = {
            name: tf.constant(_concat([c.features[name] for c in chunks]), spec.dtype)
            for name, spec in self._loaded.specs.items()
        }
        embeddings = self._loaded.function(**features)["embedding"].numpy()
        ids = np.concatenate([c.ids for c in chunks])
        finite = np.isfinite(embeddings).all(axis=1)
        if not finite.all():
            sources = np.concatenate([[c.source] * len(c) for c in chunks])
            rows = np.concatenate([c.rows for c in chunks])
            for position in np.flatnonzero(~finite).tolist():
                value = {name: values.numpy()[position] for name, values in features.items()}
                reason = "the embedding has NaN or inf values"
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER, embed_sources.dead_letter(str(sources[position]), reason, int(rows[position]), value)
                )
            self._rows_rejected.inc(int((~finite).sum()))
            ids, embeddings = ids[finite], embeddings[finite]
        self._rows_embedded.inc(len(ids))
        if len(ids):
            yield EmbeddedChunk(ids, embeddings.astype(self._embedding_dtype, copy=False))


def _match(patterns: Sequence[str]) -> List[str]:
    """The files matching each pattern, sorted; a pattern matching nothing is an error."""
    files = []
    for pattern, result in zip(patterns, FileSystems.match(list(patterns))):
        paths = sorted(m.path for m in result.metadata_list)
        if not paths:
            raise FileNotFoundError(f"No input file matches {pattern}.")
        files.extend(paths)
    return list(dict.fromkeys(files))


def build_pipeline(
    pipeline: beam.Pipeline, config: EmbedJobConfig, info: SignatureInfo, files: Sequence[str], tmp: str, run: str
) -> None:
    """Adds the job's transforms to ``pipeline``; outputs go to ``tmp`` with names holding ``run``."""
    column_types = reader_column_types(info.input_specs)
    if info.id_column not in column_types:
        column_types[info.id_column] = info.id_dtype
    spec = OutputSpec(info.embedding_dim, config.embedding_dtype, info.id_column, info.id_dtype)
    chunk_rows = min(config.read_chunk_rows, config.batch_size)
    units = (
        pipeline
        | "Files" >> beam.Create(list(files))
        | "ListReadUnits"
        >> beam.ParDo(embed_sources.ListReadUnits(config.input_format, column_types)).with_outputs(
            DEAD_LETTER, main="units"
        )
    )
    rows = (
        units.units
        | "Distribute" >> beam.Reshuffle()
        | "ReadRows"
        >> beam.ParDo(
            embed_sources.ReadRowChunks(
                column_types, info.id_column, tuple(info.input_specs), chunk_rows, info.separators
            )
        ).with_outputs(DEAD_LETTER, main="chunks")
    )
    embedded = (
        rows.chunks
        | "Batch"
        >> beam.BatchElements(min_batch_size=config.batch_size, max_batch_size=config.batch_size, element_size_fn=len)
        | "Embed"
        >> beam.ParDo(
            EmbedBatches(config.model_dir, config.signature, info.needs_scann, config.embedding_dtype)
        ).with_outputs(DEAD_LETTER, main="embeddings")
    )
    prefix = FileSystems.join(tmp, f"embeddings-{run}")
    if "parquet" in config.output_formats:
        schema = embed_output.arrow_schema(spec)
        (
            embedded.embeddings
            | "ToArrow" >> beam.Map(embed_output.to_arrow_table, schema)
            | "WriteParquet" >> beam.io.Write(embed_output.EmbeddingParquetSink(prefix, schema))
        )
    if "tfrecord" in config.output_formats:
        (
            embedded.embeddings
            | "ToExamples" >> beam.FlatMap(embed_output.to_examples, info.id_column)
            | "WriteTFRecord" >> beam.io.WriteToTFRecord(prefix, file_name_suffix=".tfrecord")
        )
    if "npy" in config.output_formats:
        (
            embedded.embeddings
            | "WriteNpy" >> beam.ParDo(embed_output.WriteNpyShard(tmp, run))
            | "ListNpy" >> beam.combiners.ToList()
            | "RecordNpy" >> beam.Map(embed_output.write_npy_shard_list, tmp)
        )
    (
        (units[DEAD_LETTER], rows[DEAD_LETTER], embedded[DEAD_LETTER])
        | "DeadLetters" >> beam.Flatten()
        | "DeadLetterJson" >> beam.Map(embed_sources.dead_letter_json)
        | "WriteDeadLetters"
        >> beam.io.WriteToText(FileSystems.join(tmp, f"dead_letter-{run}"), file_name_suffix=".jsonl")
    )


def _counters(result: beam.runners.runner.PipelineResult) -> Dict[str, int]:
    counters = dict.fromkeys(COUNTERS, 0)
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] += int(value or 0)
    return counters


def run_embed_job(config: EmbedJobConfig, pipeline_options: Optional[PipelineOptions] = None) -> EmbedJobResult:
    """Runs the embedding job to completion and publishes its files in ``config.output``.

    Args:
      config: what to embed and where.
      pipeline_options: Beam options (runner, workers, ...); default DirectRunner.

    Returns:
      The output directory, run id, published files and counters.

    Raises:
      FileNotFoundError: an input pattern matches no file.
      tfrec_pipelines.data.DataError: the first readable input file lacks the id column or a signature
        input, or no input file can be read (the message names each file and why).
      ValueError: a bad signature, an input suffix naming no format (without ``input_format``), or an
        existing output of another embedding dimension or dtype.
      FileExistsError: the output directory exists and is not an embedding output.
    """
    info = describe_signature(config)
    spec = OutputSpec(info.embedding_dim, config.embedding_dtype, info.id_column, info.id_dtype)
    embed_output.check_output(config.output, spec)
    files = _match(config.inputs)
    formats = [config.input_format or embed_sources.file_format(path) for path in files]  # raises for a suffix
    column_types = {**reader_column_types(info.input_specs), info.id_column: info.id_dtype}
    embed_sources.check_source_columns(files, formats, column_types)
    run = f"{uuid.uuid4().hex[:8]}"
    tmp = FileSystems.join(config.output, f".tmp-{run}")
    FileSystems.mkdirs(tmp)
    try:
        pipeline = beam.Pipeline(options=pipeline_options or PipelineOptions())
        build_pipeline(pipeline, config, info, files, tmp, run)
        result = pipeline.run()
        result.wait_until_finish()
        counters = _counters(result)
        record = {
            "model_dir": config.model_dir,
            "signature": config.signature,
            "inputs": list(config.inputs),
            "output_formats": list(config.output_formats),
            "counters": counters,
        }
        names = embed_output.finalize(config.output, tmp, run, spec, record)
    except BaseException:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        raise
    logger.info("Embedding run %s: %s; %d files in %s", run, counters, len(names), config.output)
    return EmbedJobResult(config.output, run, tuple(names), counters)


def _parser(prog: str = "python -m tfrec_pipelines.embed_job") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Embed feature rows with a tfrec-towers SavedModel on Apache Beam and write id, embedding "
        "shards. Arguments not listed here are Beam pipeline options, passed on unchanged "
        "(default runner: DirectRunner).",
        epilog="example:\n  python -m tfrec_pipelines.embed_job --model exports/movies/1 --input 'corpus/*.parquet' "
        "--output embeddings/movies --format parquet --format npy\n"
        "  (DirectRunner defaults added unless given: " + " ".join(DIRECT_RUNNER_DEFAULTS) + ")\n"
        "  (on Dataflow add: --runner DataflowRunner --project P --region R --temp_location gs://B/tmp)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="SavedModel version directory of a tfrec-towers export")
    parser.add_argument("--input", required=True, action="append", help="input file or glob (repeatable)")
    parser.add_argument("--output", required=True, help="output directory (created, or added to)")
    parser.add_argument("--signature", choices=SIGNATURES, default="candidate_embedding")
    parser.add_argument("--input-format", choices=FORMATS, help="default: from each file's suffix")
    parser.add_argument("--id-column", help="column written beside each embedding (default: the export's candidate id)")
    parser.add_argument(
        "--id-dtype",
        choices=embed_output.ID_DTYPES,
        default="int64",
        help="dtype of an id column that is not a signature input",
    )
    parser.add_argument(
        "--format",
        dest="output_formats",
        choices=OUTPUT_FORMATS,
        action="append",
        help="output format (repeatable; default parquet)",
    )
    parser.add_argument("--batch-size", type=int, default=EmbedJobConfig.batch_size, help="rows per signature call")
    parser.add_argument("--embedding-dtype", choices=EMBEDDING_DTYPES, default="float32")
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m tfrec_pipelines.embed_job") -> int:
    """CLI: parses the job's arguments, passes the rest to Beam's ``PipelineOptions`` and runs the job.

    Beam options are passed on unchanged; :data:`DIRECT_RUNNER_DEFAULTS` are added when absent.
    """
    args, beam_args = _parser(prog).parse_known_args(argv)
    given = {argument.split("=")[0] for argument in beam_args}
    beam_args = [d for d in DIRECT_RUNNER_DEFAULTS if d.split("=")[0] not in given] + beam_args
    config = EmbedJobConfig(
        model_dir=args.model,
        inputs=tuple(args.input),
        output=args.output,
        signature=args.signature,
        input_format=args.input_format,
        id_column=args.id_column,
        id_dtype=args.id_dtype,
        output_formats=tuple(dict.fromkeys(args.output_formats or ["parquet"])),
        batch_size=args.batch_size,
        embedding_dtype=args.embedding_dtype,
    )
    result = run_embed_job(config, PipelineOptions(beam_args))
    print(
        json.dumps(
            {"output": result.output, "run": result.run, "counters": result.counters, "files": list(result.files)},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
