# One entry point for people and CI. Every target installs what it needs first (idempotent .venv).
#   make setup        CPU dependency set into .venv (GPU=1 for the CUDA set: fbgemm-gpu, nccl)
#   make demo         the main job: local cluster + MLflow server, stages as Ray jobs, the feed deployed
#   make demo-local   the same in one process (local Ray, embedded MLflow store)
#   make test         lint + type check + the whole test suite (the page's in Debian's Chromium)
#   make bench        figures for bench/RESULTS.md (after make demo: bench-online, the simulated A/Bs;
#                     bench-retrieval, recall and pre-ranking against the world's oracle, and what
#                     suggestions cost per feed;
#                     bench-chaos, a replica killed under load; bench-int8, the ranker in int8)
#   make simulate     simulated users against the deployed feed (after make demo)
#   make retrain      served logs → new version → online test → promoted only if it wins (after make demo)
#   make up / stop    the local cluster: Ray head + WORKERS worker nodes, MLflow server (+ Redis: REDIS=1)
#   make ui           the MLflow UI on DATA_DIR's store and artifacts (port 5001), cluster up or not
#   make image        the container image the cluster/ manifests run (GPU=1 for the CUDA one)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
GPU ?= 0
DATA_DIR ?= data/demo
CONFIG ?= configs/data.yaml
TRAIN_CONFIG ?= configs/train.yaml
VARIANT := $(if $(filter 1,$(GPU)),gpu,cpu)
WORKERS ?= 1
REDIS ?= 0
IMAGE ?= ray-feed:2.60.0-$(VARIANT)
PY := $(VENV)/bin/python
# --compile-bytecode: uv leaves it to Python, which does not write it where PYTHONDONTWRITEBYTECODE is set
# (as on these machines): every Ray worker and job would compile ray, mlflow, … again at each start.
UV_INSTALL := $(VENV)/bin/uv pip install --python $(PY) --quiet --compile-bytecode
STAMP := $(VENV)/.installed-$(VARIANT)
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: setup setup-dev browser demo demo-local simulate retrain bench-online bench-retrieval bench-chaos bench-int8 ui test lint typecheck bench clean-data up stop status image

$(STAMP): requirements/base.txt requirements/$(VARIANT).txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	# torch with pip: pip's configuration on these machines (find-links, constraints) knows where the
	# CPU build lies; uv does not, and would download a CUDA build. uv installs the rest: ~1 min
	# instead of pip's ~3, the same versions. Bytecode is compiled in parallel (pip's own is sequential:
	# +30 s for torch and its deps); compileall exits 1 on a few deliberately invalid files in torch.
	$(PY) -m pip install --quiet --no-compile $$(grep -E '^torch==' requirements/$(VARIANT).txt)
	$(PY) -m compileall -q -j 0 $(VENV)/lib/python3*/site-packages > /dev/null || true
	$(UV_INSTALL) -r requirements/$(VARIANT).txt
	# torchrec's metadata asks for the CUDA fbgemm-gpu: install it without deps (its pure-Python
	# requirements are in requirements/base.txt).
	$(UV_INSTALL) --no-deps torchrec==1.8.0
	# HAProxy in front of the feed's replicas (serve/runtime.py): retries what a dying replica dropped.
	# A system package: installed with apt where this runs as root, else say how.
	@command -v haproxy >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy >/dev/null 2>&1; }; }; } || \
		echo "NOTE: haproxy is not installed (apt install haproxy): the feed runs behind Ray's Python proxy, and a replica crash fails its in-flight requests"
	@rm -f $(VENV)/.installed-cpu $(VENV)/.installed-gpu
	@touch $@

$(DEV_STAMP): $(STAMP) requirements/dev.txt
	$(UV_INSTALL) -r requirements/dev.txt
	@touch $@

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(PY) -m cluster.demo --config $(CONFIG) --train-config $(TRAIN_CONFIG) --data-dir $(DATA_DIR) \
		--workers $(WORKERS)

demo-local: $(STAMP)
	$(PY) -m pipelines.demo --config $(CONFIG) --train-config $(TRAIN_CONFIG) --data-dir $(DATA_DIR)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy

test: lint typecheck browser
	$(VENV)/bin/pytest

# The page's browser tests (tests/serving/test_page.py) drive Debian's Chromium; Playwright's own browser
# download is not used. Installed with apt where this runs as root, else the tests say they did not run.
browser:
	@command -v chromium >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
		echo "NOTE: chromium is not installed (apt install chromium): the page's browser tests will not run"

bench: $(STAMP)
ifeq ($(GPU),1)
	# On a GPU machine (under 5 min): TorchRec row-wise over nccl on every GPU vs the plain twin on them.
	$(PY) -m bench.train_speed --gpu --out bench/RESULTS.md
else
	$(PY) -m bench.data_pipeline --out bench/RESULTS.md
	$(PY) -m bench.train_speed --out bench/RESULTS.md
	$(PY) -m bench.quality --world demo --out bench/RESULTS.md
	$(PY) -m bench.quality --world nograph --out bench/RESULTS.md
	$(PY) -m bench.serve_latency --out bench/RESULTS.md
endif

simulate: $(STAMP)
	FEED_JWT_SECRET=$${FEED_JWT_SECRET:-$$(cat .cluster/jwt_secret)} \
		$(PY) -m pipelines.simulate --data-dir $(DATA_DIR) --config $(CONFIG)

retrain: $(STAMP)
	$(PY) -m cluster.retrain --data-dir $(DATA_DIR) --config $(CONFIG) --train-config $(TRAIN_CONFIG) \
		--workers $(WORKERS)

bench-online: $(STAMP)
	$(PY) -m bench.online_ab --data-dir $(DATA_DIR) --out bench/RESULTS.md
	$(PY) -m bench.online_ab --data-dir $(DATA_DIR) --experiment suggestions --seeds 3 --out bench/RESULTS.md

bench-retrieval: $(STAMP)
	$(PY) -m bench.retrieval --data-dir $(DATA_DIR) --out bench/RESULTS.md
	$(PY) -m bench.prerank --data-dir $(DATA_DIR) --out bench/RESULTS.md
	$(PY) -m bench.retrieval_cost --data-dir $(DATA_DIR) --out bench/RESULTS.md

bench-int8: $(STAMP)
	$(PY) -m bench.int8 --data-dir $(DATA_DIR) --out bench/RESULTS.md

bench-chaos: $(STAMP)
	$(PY) -m bench.replica_kill --data-dir $(DATA_DIR) --out bench/RESULTS.md

up: $(STAMP)
	$(PY) -m cluster.local up --workers $(WORKERS) --data-dir $(DATA_DIR) $(if $(filter 1,$(REDIS)),--redis,)

status: $(STAMP)
	$(PY) -m cluster.local status

ui: $(STAMP)
	$(PY) -m cluster.local ui --data-dir $(DATA_DIR)

stop: $(STAMP)
	$(PY) -m cluster.local down

image:
	docker build -f cluster/docker/Dockerfile --build-arg VARIANT=$(VARIANT) \
		--build-arg BASE=rayproject/ray:2.60.0-py311-$(VARIANT) -t $(IMAGE) .

clean-data:
	rm -rf data/
