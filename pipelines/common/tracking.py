"""MLflow: where runs and the model registry live, and how a ranker becomes a registered version.

Tracking defaults to an embedded SQLite store in the data directory (``D/mlflow.db``, artifacts in
``D/mlartifacts/``); ``MLFLOW_TRACKING_URI`` points everything at a tracking server instead (the cluster's).
Serving and promotion only ever resolve ``models:/feed-ranker@<alias>``, so an alias moved by
``pipelines.promote`` and one moved by hand in the MLflow UI are the same thing.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.common.runtime import REPO

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
#: The servable ranker inside a training checkpoint folder (written by rank 0 each epoch).
MODEL_FILE = "model.pt"
#: A retriever version's post vectors in its run (:mod:`pipelines.retrieval.post_index`).
POST_INDEX_ARTIFACT = "post_index"
CHAMPION, CHALLENGER = "champion", "challenger"


#: Embedded-store URIs this process pointed MLflow at: ``mlflow.set_tracking_uri`` copies them into
#: ``MLFLOW_TRACKING_URI``, where they must not pass for a tracking server the user chose.
_EMBEDDED: set[str] = set()


def embedded_uri(data_dir: Path) -> str:
    """The data directory's own store: ``sqlite:///D/mlflow.db``."""
    return f"sqlite:///{(data_dir / DB_FILE).resolve()}"


def tracking_uri(data_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if the user set it (a tracking server), else ``sqlite:///D/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and env not in _EMBEDDED else embedded_uri(data_dir)


def is_embedded(data_dir: Path) -> bool:
    """Whether this data directory's runs go to its own store (artifacts then go to ``D/mlartifacts``)."""
    return tracking_uri(data_dir) == embedded_uri(data_dir)


def configure(data_dir: Path) -> str:
    """Point the MLflow client (tracking and registry) at this data directory's store; returns the URI."""
    import mlflow

    uri = tracking_uri(data_dir)
    if uri == embedded_uri(data_dir):
        _EMBEDDED.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@contextmanager
def pointed_at(uri: str) -> Iterator[None]:
    """MLflow (tracking and registry) at ``uri`` for a block, then exactly as before.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also write ``MLFLOW_TRACKING_URI`` /
    ``MLFLOW_REGISTRY_URI`` (for subprocesses), so restoring with them alone leaves a URI behind; this puts
    back both the client's settings and the two variables.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {k: os.environ.get(k) for k in names}
    client = tracking_utils._tracking_uri, registry_utils._registry_uri
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    mlflow.set_tracking_uri(uri)  # the client's own setting wins over the variable: set both
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(client[0])  # type: ignore[arg-type]  # None: unset
        mlflow.set_registry_uri(client[1])  # type: ignore[arg-type]
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def experiment_id(name: str, data_dir: Path) -> str:
    """The experiment's id, created on first use; with the embedded store its artifacts stay in ``D/``."""
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if is_embedded(data_dir):  # a tracking server keeps artifacts where it was told to
        location = (data_dir / ARTIFACT_DIR / name).resolve().as_uri()
    return str(mlflow.create_experiment(name, artifact_location=location))


def flat_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → dotted MLflow params (values as strings, capped at MLflow's 6,000 characters).

    >>> flat_params({"optim": {"lr": 0.1, "tasks": [1, 2]}, "w": {"click": 1.0}})
    {'optim.lr': '0.1', 'optim.tasks': '[1, 2]', 'w.click': '1.0'}
    """
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, f"{key}."))
        else:
            out[key] = str(v)[:6000]
    return out


def example_frame(columns: list[str], cols: dict[str, np.ndarray], rows: int = 5) -> pd.DataFrame:
    """``columns`` of ``cols`` as a DataFrame (vectors and lists as Python lists, as JSON carries them)."""
    data: dict[str, Any] = {}
    for c in columns:
        v = cols[c][:rows]
        data[c] = [np.asarray(x).tolist() for x in v] if (v.ndim > 1 or v.dtype == object) else v
    import pandas as pd  # serving imports this module for alias names; the frame is for logging only

    return pd.DataFrame(data)


def _log_pyfunc(
    model: Any,
    name: str,
    code: str,
    artifact: str,
    example: pd.DataFrame,
    output: pd.DataFrame,
    model_name: str,
    params: dict[str, Any] | None = None,
) -> Any:
    """Save ``model`` (its ``save(path)``) as the artifact of the pyfunc in ``models/<code>``, log it in the
    active run with a signature inferred from ``example`` → ``output`` and register a new version of
    ``model_name``; returns the ``ModelVersion``."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # ids and codes are integers that are never missing
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        path = Path(tmp) / f"{name}.pt"
        model.save(path)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(REPO / "models" / code),
            artifacts={artifact: str(path)},
            code_paths=[str(REPO / "models")],
            signature=infer_signature(example, output, params=params),
            input_example=example,
            registered_model_name=model_name,
            pip_requirements=_requirements(),
        )
    return MlflowClient().get_model_version(model_name, str(info.registered_model_version))


def log_ranker(ranker: Any, cols: dict[str, np.ndarray], model_name: str) -> Any:
    """Log ``ranker`` (a ServableRanker) as a pyfunc model in the active run and register it as a new
    version of ``model_name``; returns the ``ModelVersion``."""
    from models.pyfunc import ARTIFACT, output_frame

    example = example_frame(ranker.input_columns, cols)
    output = output_frame(ranker.predict({c: example[c].to_numpy() for c in ranker.input_columns}))
    return _log_pyfunc(ranker, "ranker", "pyfunc.py", ARTIFACT, example, output, model_name)


def log_retriever(retriever: Any, cols: dict[str, np.ndarray], model_name: str) -> Any:
    """Log ``retriever`` (a ServableRetriever) as a pyfunc model in the active run (its input example: viewer
    columns) and register it as a new version of ``model_name``; returns the ``ModelVersion``."""
    from models.retriever_pyfunc import ARTIFACT, vector_frame

    names = retriever.viewer_columns
    example = example_frame(names, cols)
    output = vector_frame(retriever.embed_viewers({c: example[c].to_numpy() for c in names}))
    return _log_pyfunc(
        retriever,
        "retriever",
        "retriever_pyfunc.py",
        ARTIFACT,
        example,
        output,
        model_name,
        {"tower": "viewer"},
    )


def load_retriever_version(uri: str) -> Any:
    """A ServableRetriever from a registered model URI (``models:/feed-retriever@champion``)."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(uri).unwrap_python_model().retriever


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("torch", "torchrec", "numpy", "pandas", "mlflow"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            reqs.append(pkg)
    fb = "fbgemm-gpu-cpu"
    try:
        reqs.append(f"{fb}=={version(fb)}")
    except PackageNotFoundError:
        reqs.append(f"fbgemm-gpu=={version('fbgemm-gpu')}")
    return reqs


def load_ranker_version(uri: str) -> Any:
    """A ServableRanker from a registered model URI (``models:/feed-ranker@champion``, ``models:/x/3``)."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(uri)
    return model.unwrap_python_model().ranker


def version_of(model_name: str, alias: str) -> Any | None:
    """The ``ModelVersion`` an alias points at, or None when it is not set."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def load_trained(checkpoint_dir: Path) -> Any:
    """The unsharded servable ranker from a training checkpoint folder."""
    from models.servable import ServableRanker

    return ServableRanker.load(checkpoint_dir / MODEL_FILE)


def load_post_index(name: str, version: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The post vectors logged with a registered version (the current MLflow registry): sorted post ids
    and their ``p / T`` rows; None for a version registered without them."""
    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    run_id = MlflowClient().get_model_version(name, version).run_id
    if not run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=POST_INDEX_ARTIFACT, dst_path=tmp
            )
        except Exception:  # a version registered without vectors (or by an older pipeline)
            return None
        files = sorted(Path(path).glob("*.parquet"))
        if not files:
            return None
        table = pa.concat_tables([pq.read_table(f) for f in files])
    ids = table.column("post_id").to_numpy().astype(np.int64)
    vec = table.column("vector").combine_chunks()
    vectors = vec.values.to_numpy().reshape(-1, vec.type.list_size).astype(np.float32)
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order]
