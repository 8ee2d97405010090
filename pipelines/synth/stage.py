"""The synth stage: a synthetic world written as raw logs (``D/raw/``) and its truth (``D/truth/``)."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

from pipelines.common.config import SynthConfig
from pipelines.common.io import atomic_dir, replace_dir, write_by_date, write_json, write_table
from pipelines.common.runtime import task_cpus
from pipelines.synth.world import build_world, generate_chunk

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- the stage
def run(cfg: SynthConfig, data_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Generate ``data_dir/raw`` and ``data_dir/truth``; returns the row counts it wrote.

    Both folders are replaced as a whole only when generation succeeded.
    """
    import ray
    from tqdm import tqdm

    world, tables = build_world(cfg)
    log.info(
        "world: %d users, %d friendships, %d blocks, %d posts",
        tables["users"].num_rows,
        tables["friendships"].num_rows,
        tables["blocks"].num_rows,
        tables["posts"].num_rows,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    stage = data_dir / f".synth-{cfg.seed}"
    with atomic_dir(stage) as tmp:
        for name in ("users", "friendships", "blocks"):
            write_table(tables[name], tmp / "raw" / name)
        write_by_date(tables["posts"], tmp / "raw" / "posts", "created_at", "00000")
        world_ref = ray.put(world)
        task = ray.remote(num_cpus=task_cpus())(generate_chunk)
        bounds = [*list(range(0, cfg.users, cfg.users_per_task)), cfg.users]
        pending = [
            task.remote(world_ref, cfg, i, lo, hi, str(tmp))
            for i, (lo, hi) in enumerate(itertools.pairwise(bounds))
        ]
        counts = {"impressions": 0, "engagements": 0}
        with tqdm(total=len(pending), desc="synth sessions", unit="chunk", disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for c in ray.get(done):
                    for key in counts:
                        counts[key] += c[key]
                bar.update(len(done))
    summary: dict[str, Any] = {k: tables[k].num_rows for k in ("users", "friendships", "blocks", "posts")}
    summary.update(counts)
    # Swap the finished raw/ and truth/ in; a failed run above left the old ones untouched.
    for name in ("raw", "truth"):
        replace_dir(stage / name, data_dir / name)
    stage.rmdir()
    write_json(data_dir / "synth_summary.json", {"config": cfg.model_dump(mode="json"), "rows": summary})
    return summary
