# Every target (re)creates the virtual environment when pyproject.toml changed, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow compat bench gpu-check lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	test -f cache/demo-tiny/open_clip_config.json || \
		$(BIN)/clip-backdoor pretrain recipes/demo/pretrain.yaml
	$(BIN)/clip-backdoor run recipes/demo/poison_and_defend.yaml
	$(BIN)/clip-backdoor run recipes/demo/detect.yaml
	$(BIN)/clip-backdoor run recipes/demo/scan_clean.yaml
	$(BIN)/clip-backdoor run recipes/demo/scan.yaml

# two workers, one core each (tests/conftest.py): 20% faster than one process of two threads.
# Precision: 'auto' resolves to fp32 in the suite; CLIP_BACKDOOR_PRECISION=bf16 (or fp32) forces it.
test: $(STAMP)
	@start=$$(date +%s); $(BIN)/python -m pytest tests -n 2 --dist loadfile; status=$$?; \
		echo "make test: $$(( $$(date +%s) - start )) s wall"; exit $$status

test-slow: $(STAMP)
	$(BIN)/python -m pytest tests -n 2 --dist loadfile -m slow

compat: $(STAMP)
	$(BIN)/clip-backdoor compat

bench: $(STAMP)
	$(BIN)/python benchmarks/zeroshot_throughput.py
	$(BIN)/python benchmarks/pretrain_throughput.py
	$(BIN)/python benchmarks/poisoning_throughput.py
	$(BIN)/python benchmarks/prompt_learning.py
	$(BIN)/python benchmarks/visual_prompts.py
	$(BIN)/python benchmarks/decomposition.py
	$(BIN)/python benchmarks/scan.py
	$(BIN)/python benchmarks/scan_cost.py --classes --scanners patch_search,blend_search
	$(BIN)/python benchmarks/data_scan.py

# the general GPU smoke, then every paper's recipe (recipes/papers/) run --smoke on CUDA, timed
PAPERS := $(wildcard recipes/papers/*/*.yaml)
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_smoke.py
	rm -rf runs/gpu-check
	for recipe in $(PAPERS); do \
		$(BIN)/clip-backdoor run $$recipe --smoke --runs-root runs/gpu-check || exit 1; done
	$(BIN)/clip-backdoor results families runs/gpu-check/* --out results/gpu-check

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs cache .pytest_cache
