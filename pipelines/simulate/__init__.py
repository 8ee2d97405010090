"""Online evaluation: simulated users read their feed through the real HTTP endpoint.

``python -m pipelines.simulate --data-dir D --url http://127.0.0.1:8000 [--users 300]``

Each simulated user is a real user of the synthetic world. Their behaviour comes from the world's hidden
engagement model (:func:`pipelines.synth.world.engagement_truth`: interests, tie strengths, post quality,
recency, position), never from the ranker: a user opens the app (``GET /feed/{id}`` with a minted token),
reads down the page (going on to the next item with probability ``scroll``, stopping after a hide), engages
and dwells as the hidden model says, sends what they did (``POST /events``), and comes back for another
session with a probability that rises with what they got out of this one (positive actions and dwell)
and falls with hides, up to ``max_sessions``. That last rule is the simulator's assumption, stated here
because "sessions per user" depends on it.

Per arm (what the server put the user in: ``champion``, ``challenger``, or the reverse-chronological
holdout ``chronological``, see ``model.challenger_traffic`` / ``model.chronological_traffic``): impressions
viewed, CTR, like / comment / share / hide rates per viewed impression, dwell per session, sessions per
user, feed latency p50/p99. Every arm is compared with ``champion`` (or the first arm) with 95% bootstrap
confidence intervals over users. With ``--split retrieval`` the arms are the retrieval experiment's
instead: ``suggestions`` (friends' posts and the retriever's) against the holdout ``friends_only``
(``retrieval.holdout_traffic``), which is then the control. Results go to MLflow (experiment
``feed-online``) and ``--out``.
"""
