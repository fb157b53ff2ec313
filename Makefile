# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

.PHONY: venv demo test lint
venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pgr demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Every accuracy figure of RESULTS.md from the shipped checkpoint (needs the datasets under data/; about
# 40 min on 2 CPU cores). Reports and figures go to var/results/.
CKPT ?= reid/weights/pgr_mobilenetv2_market1501.pt
EVAL = $(VENV)/bin/python -m training.evaluate_model --checkpoint $(CKPT) --cache var/cache --figures var/results
.PHONY: results
results: $(STAMP)
	mkdir -p var/results
	$(EVAL) --dataset market1501 --out var/results/market1501.json
	$(EVAL) --dataset dukemtmc --out var/results/dukemtmc.json
	$(EVAL) --dataset occluded_duke --out var/results/occluded_duke.json
	$(VENV)/bin/python -m training.evaluate_peer --dataset market1501 --out var/results/peer_market1501.json
