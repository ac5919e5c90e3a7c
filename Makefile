# aurum_ml — everything runs from the project's own virtualenv (.venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup photos demo test lint alerts worker up down bench bench-detection bench-embedding bench-pipeline bench-profile bench-services bench-api bench-memory bench-population chaos security clean

setup: $(VENV)/.installed  ## create .venv and install the project with its test extra

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# setuptools advises on every editable install; that line is not about this project
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet -e '.[test,ops]'
	touch $@

photos: setup  ## fetch the real test photos into .cache/test-photos (git-ignored)
	$(BIN)/python tests/photos.py

demo: photos  ## score the sample photos on the embedded default (no servers needed)
	$(BIN)/aurum-ml score .cache/test-photos/*.jpg .cache/test-photos/32bit.png

test: setup  ## the test suite: needs Redis at 127.0.0.1:6379 and RabbitMQ at :5672
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check aurum_ml tests bench celeryconfig.py
	$(BIN)/ruff format --check aurum_ml tests bench celeryconfig.py
	$(BIN)/mypy

alerts:  ## check deploy/prometheus and run the alerts' unit tests (needs promtool: apt-get install prometheus)
	cd deploy/prometheus && promtool check config prometheus.yml && promtool test rules alerts.test.yml

bench: bench-detection bench-embedding bench-pipeline bench-profile bench-index bench-services bench-api bench-memory bench-population  ## every benchmark into BENCHMARKS.md: ~8 min on 2 cores, most of it the 1M-face population (load, index build, one re-rank, restore) (QUICK=1: ~2 min)

bench-detection: photos  ## detect before/after coarse to fine, per photo and size
	$(BIN)/python bench/detection.py $(if $(QUICK),--quick)

bench-embedding: photos  ## the descriptor on dlib vs ONNX Runtime, per chip, and how far apart the vectors are
	$(BIN)/python bench/embedding.py $(if $(QUICK),--quick)

bench-pipeline: photos  ## the whole chain on Redis and worker processes vs the raw model loop
	$(BIN)/python bench/pipeline.py $(if $(QUICK),--quick)

bench-profile: photos  ## CPU per job of each process at saturation (and py-spy's shares when it is installed)
	$(BIN)/python bench/cpu_profile.py $(if $(QUICK),--quick) $(if $(wildcard $(BIN)/py-spy),--py-spy)

bench-index:  ## the score index's cost per face (caller and Redis CPU), on a redis-server of its own (~10 s)
	$(BIN)/python bench/score_index.py

bench-services: photos  ## ML services (1 and 2 uvicorn workers) vs the in-process call
	$(BIN)/python bench/services.py

bench-api: photos  ## POST /v1/score?wait=30 vs score_face.delay().get(), same workers
	$(BIN)/python bench/api.py

bench-memory: photos  ## peak memory of one job on the largest image of each format the header check accepts (~40 s)
	$(BIN)/python bench/memory.py

bench-population: photos  ## Edge at 1k/100k/1M faces beside local mode (~6 min; QUICK=1: 1k/100k, under 1 min)
	$(BIN)/python bench/population.py $(if $(QUICK),--quick)

chaos: photos  ## faults under load (worker kills, Redis and RabbitMQ restarts, services down or flapping, bad input, webhook outages, a kill mid-re-rank, erasure mid-re-score) → docs/reliability.md (~55 min; .venv/bin/python bench/chaos.py --only NAME,... runs a subset)
	$(BIN)/python bench/chaos.py --jobs 150

security: photos  ## the stack (make up) on loopback met by 87 hostile requests and messages, one line per probe; fails on any mismatch (~50 s) → docs/security.md
	$(BIN)/python bench/security.py --report docs/security.md

worker: setup  ## one worker for every queue, against AURUM_BROKER_URL (one process: it owns a local Qdrant folder)
	$(BIN)/celery -A aurum_ml worker -Q detect,embed,score,store,maintenance,notify --pool threads --loglevel INFO

# --- the whole stack on loopback, without Docker: deploy/Procfile run by honcho ------------
STACK ?= .stack
PYRAND = $(BIN)/python -c "import secrets; print(secrets.token_hex(16))"

up: setup  ## start the whole stack (services, workers, beat, Flower, metrics, API); logs in $(STACK)/logs
	@mkdir -p $(STACK)/logs
	@test -f $(STACK)/env || { \
	  echo "AURUM_BROKER_URL=$${AURUM_BROKER_URL:-redis://127.0.0.1:6379/0}"; \
	  echo "AURUM_DATA_DIR=$${AURUM_DATA_DIR:-$(abspath $(STACK))/data}"; \
	  echo "API_PORT=$${API_PORT:-8000}"; \
	  echo "DETECTION_PORT=$${DETECTION_PORT:-8001}"; \
	  echo "EMBEDDING_PORT=$${EMBEDDING_PORT:-8002}"; \
	  echo "FLOWER_PORT=$${FLOWER_PORT:-5555}"; \
	  echo "METRICS_PORT=$${METRICS_PORT:-9808}"; \
	  echo "FACE_DETECTION_SERVICE=http://127.0.0.1:$${DETECTION_PORT:-8001}"; \
	  echo "FACE_EMBEDDING_SERVICE=http://127.0.0.1:$${EMBEDDING_PORT:-8002}"; \
	  echo "ML_SERVICE_TOKEN=$$($(PYRAND))"; \
	  echo "FLOWER_BASIC_AUTH=ops:$$($(PYRAND))"; \
	  echo "AURUM_API_KEYS=$${AURUM_API_KEYS:-local:$$($(PYRAND))}"; \
	  echo "AURUM_WEBHOOK_SECRET=$${AURUM_WEBHOOK_SECRET:-$$($(PYRAND))}"; \
	  echo "AURUM_WEBHOOK_ALLOWED_HOSTS=$${AURUM_WEBHOOK_ALLOWED_HOSTS:-127.0.0.1:3000}"; \
	} > $(STACK)/env && chmod 600 $(STACK)/env
	@if [ -f $(STACK)/honcho.pid ] && kill -0 $$(cat $(STACK)/honcho.pid) 2>/dev/null; then \
	  echo "already up (honcho pid $$(cat $(STACK)/honcho.pid)); make down first"; \
	else \
	  PATH="$(abspath $(BIN)):$$PATH" nohup $(BIN)/honcho -f deploy/Procfile -e $(STACK)/env \
	    -d $(CURDIR) start > $(STACK)/logs/stack.log 2>&1 & echo $$! > $(STACK)/honcho.pid; \
	  . $(abspath $(STACK))/env; \
	  echo "up (honcho pid $$(cat $(STACK)/honcho.pid)); logs: $(STACK)/logs/stack.log"; \
	  echo "  API      http://127.0.0.1:$$API_PORT  (X-API-Key: AURUM_API_KEYS in $(STACK)/env)"; \
	  echo "  Flower   http://127.0.0.1:$$FLOWER_PORT  (FLOWER_BASIC_AUTH in $(STACK)/env)"; \
	  echo "  metrics  http://127.0.0.1:$$METRICS_PORT/metrics"; \
	  echo "  services http://127.0.0.1:$$DETECTION_PORT, :$$EMBEDDING_PORT (ML_SERVICE_TOKEN)"; \
	fi

down:  ## stop the stack `make up` started; nothing is left running
	@if [ -f $(STACK)/honcho.pid ] && kill -0 $$(cat $(STACK)/honcho.pid) 2>/dev/null; then \
	  kill -TERM $$(cat $(STACK)/honcho.pid); \
	  for _ in $$(seq 60); do kill -0 $$(cat $(STACK)/honcho.pid) 2>/dev/null || break; sleep 0.5; done; \
	  echo "down"; \
	else echo "not running"; fi
	@rm -f $(STACK)/honcho.pid

clean:
	rm -rf $(VENV) .cache build *.egg-info
