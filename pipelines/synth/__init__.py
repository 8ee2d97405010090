"""Synthetic social network and its interaction logs: ``python -m pipelines.synth --data-dir D``.

Writes ``D/raw/`` in the log contract (:mod:`pipelines.common.schema`) and ``D/truth/`` (ground-truth
probabilities per impression, for evaluation only). The world is made so that learning is hard but
meaningful:

* users live in cities; schools and workplaces inside cities form communities; friendships are mostly
  inside communities, with heavy-tailed degrees capped at ``max_degree``; a few blocks;
* hidden per-user topic interests (sparse), activity levels (most users are passive readers), modality
  taste; hidden per-post quality and per-friendship tie strength;
* posts (~1/day/user, heavy-tailed per author) with text built from topic vocabularies, a media vector
  for images and videos (topic-aligned, as an upstream encoder would give), a visibility mix, deletions;
* app sessions whose impressions follow a stated **logging policy**: noisy reverse-chronological over
  friends' visible posts of the last ``candidate_days``, never showing a post twice to a viewer;
* engagements drawn from a hidden model (interest × topic, tie strength, recency, modality, position,
  quality, user propensity) for every task, dwell times (long dwell after a click), rare hides and reports.

Deterministic for a seed: users are generated in fixed chunks, each chunk from its own seeded stream, and
chunks run in parallel as Ray tasks that write their own files, so memory does not grow with ``--users``.
"""
