# Two commands on a fresh machine: `make demo` (sets up if needed, runs the example workflow
# through a real ComfyUI) and `make test` (sets up if needed, runs the whole suite).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-unit test-host test-server test-browser demo bench bench-gpu lint clean-host

setup:
	@bash scripts/setup_host.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-host: setup
	$(PY) -m pytest tests/host $(PYTEST_ARGS)

test-server: setup
	$(PY) -m pytest tests/server $(PYTEST_ARGS)

test-browser: setup
	$(PY) -m pytest tests/browser $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py $(if $(CKPT),--ckpt "$(CKPT)",)

bench: setup
	$(PY) -m bench $(BENCH_ARGS)

# one GPU: every method + plain baselines, fp16, 512², 16 frames, 3 of 50 steps timed and
# extrapolated, peak VRAM (python -m bench --gpu; flags in BENCH_ARGS override the preset)
bench-gpu: setup
	$(PY) -m bench --gpu --model $(BENCH_ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean-host:
	rm -rf .venv .host
