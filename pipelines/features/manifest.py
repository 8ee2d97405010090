"""Reading ``D/features/``: the manifest (every column by role), splits as Arrow tables or numpy columns,
and the id of an evaluation set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from models.batch import Jagged
from pipelines.common.cli import DataError
from pipelines.common.io import parquet_files, read_table

NO_EXAMPLES = "no examples (run pipelines.features first)"


def read_split(data_dir: Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """All examples of one split (tests and small-scale tools; training streams with Ray Data)."""
    return read_table(data_dir / "features" / split, columns=columns, missing=NO_EXAMPLES)


def load_manifest(data_dir: Path) -> dict[str, Any]:
    """``features/manifest.json``: every column by role, the splits, the config that built them."""
    path = data_dir / "features" / "manifest.json"
    if not path.exists():
        raise DataError(f"{path}: missing (run pipelines.features first)")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


# --------------------------------------------------------------------------------------------- inputs
def split_files(data_dir: Path, split: str) -> list[str]:
    """The Parquet files of one split."""
    root = data_dir / "features" / split
    if not (files := parquet_files(root)):
        raise DataError(f"{root}: {NO_EXAMPLES}")
    return files


def eval_set_id(data_dir: Path, split: str = "test") -> str:
    """Content hash of a split's files: two evaluations are comparable only on the same id."""
    h = hashlib.sha256()
    for f in split_files(data_dir, split):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def arrow_columns(table: pa.Table, jagged: bool = False) -> dict[str, Any]:
    """Arrow columns → numpy without per-row Python objects where possible: fixed-size lists become 2-D
    arrays; variable lists become object arrays of arrays, or with ``jagged`` a
    :class:`models.batch.Jagged` (values and lengths, no per-row objects; what a training batch needs,
    not what row indexing needs). :func:`models.batch.collate` takes either."""
    out: dict[str, Any] = {}
    for name in table.column_names:
        col = table[name].combine_chunks() if table[name].num_chunks != 1 else table[name].chunk(0)
        if pa.types.is_fixed_size_list(col.type):
            flat = col.flatten().to_numpy(zero_copy_only=False)
            out[name] = flat.reshape(len(col), col.type.list_size)
        elif jagged and (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            lengths = np.diff(col.offsets.to_numpy()).astype(np.int64)
            out[name] = Jagged(col.flatten().to_numpy(zero_copy_only=False), lengths)
        elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            arr = np.empty(len(col), dtype=object)
            offsets = col.offsets.to_numpy()
            values = col.values.to_numpy(zero_copy_only=False)
            for i in range(len(col)):
                arr[i] = values[offsets[i] : offsets[i + 1]]
            out[name] = arr
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def arrow_block(columns: dict[str, Any]) -> pa.Table:
    """Prepared numpy columns → an Arrow table :func:`arrow_columns` reads back (``jagged``): a
    :class:`models.batch.Jagged` becomes a list column, a 2-D array a fixed-size list (float32), the rest
    plain columns. What a training ``prepare_block`` returns to Ray Data.

    >>> t = arrow_block({"m": np.ones((2, 3)), "j": Jagged(np.array([1, 2, 3]), np.array([2, 1]))})
    >>> back = arrow_columns(t, jagged=True)
    >>> back["m"].shape, back["j"].lengths.tolist()
    ((2, 3), [2, 1])
    """
    out = {}
    for name, col in columns.items():
        if isinstance(col, Jagged):
            offsets = np.concatenate([[0], np.cumsum(col.lengths)]).astype(np.int32)
            out[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(col.values, pa.int64()))
        elif np.ndim(col) == 2:
            flat = pa.array(np.asarray(col, np.float32).reshape(-1))
            out[name] = pa.FixedSizeListArray.from_arrays(flat, np.shape(col)[1])
        else:
            out[name] = pa.array(col)
    return pa.table(out)


def read_columns(data_dir: Path, split: str, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """One split as numpy columns (:func:`arrow_columns`)."""
    return arrow_columns(read_split(data_dir, split, columns))
