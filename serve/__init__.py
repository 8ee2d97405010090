"""The feed: a Ray Serve app (``serve.app``) over the online store, the registered ranker and the serving
log. Request flow, deployments and commands are in :mod:`serve.app`; routes and status codes in
:mod:`serve.api`."""
