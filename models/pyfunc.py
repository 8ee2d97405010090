"""MLflow packaging of the servable ranker (the one ``models/`` module that knows about MLflow).

A registered ``feed-ranker`` version is an MLflow pyfunc model logged *from code*: this file, the
``models/`` package as ``code_paths`` and the ranker payload (:class:`models.servable.ServableRanker`) as
an artifact. Loading it needs torch and torchrec, not Ray, the training code or a process group::

    model = mlflow.pyfunc.load_model("models:/feed-ranker@champion")
    model.predict(features_df)                      # DataFrame → DataFrame of per-task outputs
    model.unwrap_python_model().ranker.predict(cols)  # the fast path serving uses: numpy columns

Input: one row per (viewer, post) with the columns of ``ranker.input_columns`` (dense floats, fixed-size
float vectors, sparse int ids / codes, ``sp_topics`` a list of codes). No position: a training-only bias.
Output: ``click, like, comment, share, hide, skip`` probabilities and ``dwell_ms``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel

from models.servable import ServableRanker

ARTIFACT = "ranker"


def output_frame(pred: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({("dwell_ms" if t == "dwell" else t): v for t, v in pred.items()})


class RankerPyfunc(PythonModel):
    """``predict``: feature DataFrame → per-task outputs, exactly :meth:`ServableRanker.predict`."""

    ranker: ServableRanker

    def load_context(self, context: Any) -> None:
        self.ranker = ServableRanker.load(context.artifacts[ARTIFACT])

    # No annotation on model_input: MLflow would read one as a schema; the logged signature is the schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        missing = [c for c in self.ranker.input_columns if c not in model_input.columns]
        if missing:
            raise ValueError(f"model input lacks columns: {', '.join(missing)}")
        cols = {c: model_input[c].to_numpy() for c in self.ranker.input_columns}
        return output_frame(self.ranker.predict(cols))


# Models from code: MLflow logs this file and runs it to load the model, so no pickled object is stored.
set_model(RankerPyfunc())
