# aurum_ml — everything runs from the project's own virtualenv (.venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup photos demo test lint worker bench bench-pipeline bench-services bench-api chaos clean

setup: $(VENV)/.installed  ## create .venv and install the project with its test extra

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# setuptools advises on every editable install; that line is not about this project
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet -e '.[test]'
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

bench: bench-pipeline bench-services bench-api  ## every benchmark; numbers go to BENCHMARKS.md

bench-pipeline: photos  ## the whole chain on Redis and worker processes vs the raw model loop
	$(BIN)/python bench/pipeline.py

bench-services: photos  ## ML services (1 and 2 uvicorn workers) vs the in-process call
	$(BIN)/python bench/services.py

bench-api: photos  ## POST /v1/score?wait=30 vs score_face.delay().get(), same workers
	$(BIN)/python bench/api.py

chaos: photos  ## faults under load (worker kill, Redis and RabbitMQ restarts, services down, bad input) → docs/reliability.md
	$(BIN)/python bench/chaos.py --jobs 150

worker: setup  ## one worker for every queue, against AURUM_BROKER_URL
	$(BIN)/celery -A aurum_ml worker -Q detect,embed,score,store,maintenance --loglevel INFO

clean:
	rm -rf $(VENV) .cache build *.egg-info
