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

# Every accuracy figure of RESULTS.md from the shipped checkpoints (needs the datasets under data/; about
# 50 min on 2 CPU cores). Reports and figures go to var/results/.
CKPT ?= reid/weights/pgr_mobilenetv2_market1501.pt
OCC_CKPT ?= reid/weights/pgr_mobilenetv2_occluded_duke.pt
EVAL = $(VENV)/bin/python -m training.evaluate_model --cache var/cache
.PHONY: results
results: $(STAMP)
	mkdir -p var/results
	$(EVAL) --checkpoint $(CKPT) --figures var/results --dataset market1501 --out var/results/market1501.json
	$(EVAL) --checkpoint $(CKPT) --figures var/results --dataset dukemtmc --trivial-queries 100 \
		--out var/results/dukemtmc.json
	$(EVAL) --checkpoint $(CKPT) --figures var/results --dataset occluded_duke --trivial-queries 100 \
		--out var/results/occluded_duke.json
	$(EVAL) --checkpoint $(OCC_CKPT) --figures var/results/in_domain --dataset occluded_duke --trivial-queries 100 \
		--out var/results/occluded_duke_in_domain.json

# Intel's OpenVINO person-reidentification-retail-0277 by the same protocol (a peer baseline, not in RESULTS.md yet)
.PHONY: peer
peer: $(STAMP)
	mkdir -p var/results
	$(VENV)/bin/python -m training.evaluate_peer --dataset market1501 --out var/results/peer_market1501.json
