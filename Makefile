# pithtrain: two commands. `make test` (what CI runs) and `make train` (the main job).
# Both call `setup`, which creates .venv and installs once (again only when settings.ini or setup.py change).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test train sync test-nb

setup: $(STAMP)
$(STAMP): settings.ini setup.py
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q torch==2.13.0
	@$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# notebooks clean and package in sync: nbdev_clean + nbdev_export must change nothing under nbs/ and pithtrain/
sync: setup
	@state() { git status --porcelain -uall -- nbs pithtrain; git diff -- nbs pithtrain; git ls-files -o --exclude-standard -- nbs pithtrain | xargs -r cat; }; \
	before=$$(state | sha1sum); files_before=$$(git status --porcelain -uall -- nbs pithtrain); \
	$(VENV)/bin/nbdev_clean && $(VENV)/bin/nbdev_export || exit 1; \
	after=$$(state | sha1sum); files_after=$$(git status --porcelain -uall -- nbs pithtrain); \
	if [ "$$before" != "$$after" ]; then \
	  echo "ERROR: out of sync: nbdev_clean/nbdev_export changed nbs/ or pithtrain/ (edit the notebook, never the .py; then nbdev_clean, nbdev_export, commit both)."; \
	  echo "git status before -> after:"; diff <(echo "$$files_before") <(echo "$$files_after"); \
	  echo "files touched now:"; echo "$$files_after" | sed 's/^/  /'; exit 1; fi; \
	echo "sync: notebooks clean, pithtrain/ matches nbs/"

# every notebook in its own process (tests/test_notebooks.py) plus tests/, two workers
test: sync
	TRITON_INTERPRET=$${TRITON_INTERPRET:-1} OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q tests

# one notebook alone: make test-nb NB=nbs/01_router.ipynb
test-nb: setup
	TRITON_INTERPRET=1 $(VENV)/bin/nbdev_test --path $(NB) --do_print

train: setup
	$(VENV)/bin/pithtrain train $(ARGS)
