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

# Every figure of RESULTS.md from the shipped models (needs the datasets under data/; reports and figures go
# to var/results/). The 0277 maps of every split are cached first (var/maps, resumable, ~25 min on 2 cores);
# the default model's rows then run its heads on the cached maps, and `peer` is 0277 alone.
PYTHON = $(VENV)/bin/python
MAPS = var/maps
HEADS ?= reid/weights/pgr_0277_market1501.pt
OCC_HEADS ?= reid/weights/pgr_0277_occluded_duke.pt
DUKE_HEADS ?= reid/weights/pgr_0277_dukemtmc.pt
CKPT ?= reid/weights/pgr_mobilenetv2_market1501.pt
OCC_CKPT ?= reid/weights/pgr_mobilenetv2_occluded_duke.pt
# a1, a2 as chosen on held-out training identities (configs/heads_0277_*_val.yaml, RESULTS.md "Settings");
# the end-to-end MobileNetV2 rows keep the paper's 0.05 and 0.8
EVAL = $(PYTHON) -m training.evaluate_model --cache var/cache
MARKET = --a1 0.6 --a2 0.95
OCCLUDED = --a1 0.3 --a2 0.9
DUKE = --a1 0.3 --a2 0.95
PAPER = --a1 0.05 --a2 0.8
.PHONY: maps results peer speed
maps: $(STAMP)
	$(PYTHON) -m training.map_cache --dataset market1501 --out $(MAPS)/market1501
	$(PYTHON) -m training.map_cache --dataset dukemtmc --out $(MAPS)/dukemtmc --splits query,gallery,train
	mkdir -p $(MAPS)/occluded_duke && ln -sfn ../dukemtmc/gallery $(MAPS)/occluded_duke/gallery
	$(PYTHON) -m training.map_cache --dataset occluded_duke --out $(MAPS)/occluded_duke --splits train,query

results: maps peer speed
	mkdir -p var/results
	$(EVAL) $(MARKET) --heads $(HEADS) --map-cache $(MAPS)/market1501 --dataset market1501 --trivial-queries 100 \
		--figures var/results/0277_market \
		--out var/results/0277_market1501.json
	$(EVAL) $(OCCLUDED) --heads $(OCC_HEADS) --map-cache $(MAPS)/occluded_duke --dataset occluded_duke --trivial-queries 100 \
		--figures var/results/0277_occluded_duke --out var/results/0277_occluded_duke.json
	$(EVAL) $(DUKE) --heads $(DUKE_HEADS) --map-cache $(MAPS)/dukemtmc --dataset dukemtmc --trivial-queries 100 \
		--out var/results/0277_dukemtmc.json
	$(EVAL) $(PAPER) --checkpoint $(CKPT) --figures var/results --dataset market1501 --out var/results/market1501.json
	$(EVAL) $(PAPER) --checkpoint $(OCC_CKPT) --figures var/results/in_domain --dataset occluded_duke --trivial-queries 100 \
		--out var/results/occluded_duke_in_domain.json

# Intel's OpenVINO person-reidentification-retail-0277 alone, by the same protocol: the peer a user has today
peer: $(STAMP)
	mkdir -p var/results
	for d in market1501 dukemtmc occluded_duke; do \
		$(PYTHON) -m training.evaluate_peer --dataset $$d --out var/results/peer_$$d.json || exit 1; done

# crops/s of the default extractor (parts and pixels included), 0277 alone and the end-to-end models
speed: $(STAMP)
	$(PYTHON) -m reid.benchmark_extractors --checkpoint $(CKPT)
