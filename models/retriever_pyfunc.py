"""MLflow packaging of the servable two-tower retriever (as :mod:`models.pyfunc` packages the ranker).

A registered ``feed-retriever`` version is a pyfunc model logged from code: this file, the ``models/``
package and the retriever payload (:class:`models.retriever.ServableRetriever`) as an artifact::

    model = mlflow.pyfunc.load_model("models:/feed-retriever@champion")
    model.predict(viewers_df)                  # viewer features (the logged signature) → one vector per row
    r = model.unwrap_python_model().retriever  # what serving and the index builder use:
    r.embed_posts(post_columns)                #   the post tower, r.prior(state_columns, n) the prior
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel

from models.retriever import ServableRetriever

ARTIFACT = "retriever"


def vector_frame(vectors: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"embedding": [v.tolist() for v in vectors]})


class RetrieverPyfunc(PythonModel):
    """``predict``: viewer features → unit vectors (``params={"tower": "post"}`` embeds post columns; the
    logged signature describes the viewer input, so that call is for a model loaded without enforcement)."""

    retriever: ServableRetriever

    def load_context(self, context: Any) -> None:
        self.retriever = ServableRetriever.load(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        post = (params or {}).get("tower", "viewer") == "post"
        names = self.retriever.post_columns if post else self.retriever.viewer_columns
        if missing := [c for c in names if c not in model_input.columns]:
            raise ValueError(f"model input lacks columns: {', '.join(missing)}")
        cols = {c: model_input[c].to_numpy() for c in names}
        r = self.retriever
        return vector_frame(r.embed_posts(cols) if post else r.embed_viewers(cols))


set_model(RetrieverPyfunc())
