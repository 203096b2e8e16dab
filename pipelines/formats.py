"""File formats of tables, and the format a file's name implies.

Every reader of the package (configuration tables, candidate tables, the embedding job's inputs,
streaming shards) tells a file's format from its suffix through :func:`suffix_format`, and reads a
delimited file with :func:`csv_delimiter`, so one map decides what ``.tsv`` or ``.pq`` means
everywhere. This module imports nothing heavy: naming a format must not load TensorFlow.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Dict, Optional, Tuple, get_args

from tfrec_towers.data_config import TableFormatName as FileFormat

FILE_FORMATS: Tuple[FileFormat, ...] = get_args(FileFormat)
"""The file formats the readers take (delimited text, Parquet, ``tf.train.Example`` TFRecord): the values the
configuration's ``format`` keys accept."""

SUFFIX_FORMATS: Dict[str, FileFormat] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".tfrecord": "tfrecord",
    ".tfrecords": "tfrecord",
    ".tfrec": "tfrecord",
    ".tfr": "tfrecord",
}
"""File suffix (lower case) → its format in :data:`FILE_FORMATS`, for a file named without an explicit format."""

TAB_SEPARATED_SUFFIXES = frozenset({".tsv"})
"""Suffixes of delimited files whose fields are separated by tabs; every other delimited file uses commas."""


def file_suffix(name: str) -> str:
    """The lower-case suffix of a local path or a URL (``gs://bucket/part-0.PQ`` → ``.pq``; none → ``""``)."""
    return PurePosixPath(str(name)).suffix.lower()


def suffix_format(name: str) -> Optional[FileFormat]:
    """The format the suffix of ``name`` implies (see :data:`SUFFIX_FORMATS`), or None for another suffix."""
    return SUFFIX_FORMATS.get(file_suffix(name))


def unknown_suffix_message(name: str, what: str, how: str) -> str:
    """The one wording of "cannot tell the format": the file, its suffix, the accepted ones and ``how`` to name it.

    ``how`` completes "or ..." with the caller's way to give the format, e.g. "pass `file_format`".
    """
    return (
        f"{name}: cannot tell the format of the {what} from its suffix {file_suffix(name)!r}; expected one of "
        f"{sorted(SUFFIX_FORMATS)}, or {how} (one of {', '.join(FILE_FORMATS)})."
    )


def csv_delimiter(name: str) -> str:
    """The field separator of a delimited file: a tab for the suffixes in :data:`TAB_SEPARATED_SUFFIXES`, else ``,``."""
    return "\t" if file_suffix(name) in TAB_SEPARATED_SUFFIXES else ","
