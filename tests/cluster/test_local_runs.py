"""A stage run without ``RAY_ADDRESS`` starts its own Ray and never talks to another cluster on the machine
(issue 16): Ray's address lookups — the state API that Ray Train's controller queries, ``ray.init("auto")``
— resolve to the session's own cluster in the driver and in every worker, not to the last ``ray start``'s
(``ray_current_cluster``), and the driver's environment is restored afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from tests.conftest import REPO

SCRIPT = """
import json, os, ray
from ray._private import services
from pipelines.common.runtime import ray_session

@ray.remote
def lookup():
    return services.canonicalize_bootstrap_address(None)

with ray_session(num_cpus=1):
    own = ray.get_runtime_context().gcs_address
    driver = services.canonicalize_bootstrap_address(None)
    seen = {"own": own, "driver": driver, "worker": ray.get(lookup.remote())}
seen["after"] = os.environ.get("RAY_ADDRESS")
print("RESULT " + json.dumps(seen))
"""


def test_a_local_session_ignores_the_cluster_that_ray_start_recorded() -> None:
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        os.makedirs(f"{tmp}/ray")
        with open(f"{tmp}/ray/ray_current_cluster", "w") as f:
            f.write("127.0.0.1:1")  # what `ray start` of another cluster leaves behind
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env |= {"RAY_TMPDIR": tmp, "PYTHONPATH": str(REPO)}
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180, cwd=REPO
        )
        assert out.returncode == 0, out.stderr[-3000:]
        seen = json.loads(out.stdout.split("RESULT ", 1)[1])
        assert seen["driver"] == seen["own"]
        assert seen["worker"] == seen["own"]
        assert seen["after"] is None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
