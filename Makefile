# clusterplan: two commands do all set-up on a fresh machine.
#   make demo   creates .venv, installs clusterplan, runs a real plan on built-in presets
#   make test   creates .venv, installs with the torch and dev extras, runs ruff and pytest without the slow
#               end-to-end checks (about 5 minutes on 2 quiet cores)
#   make test-all  the same with the slow end-to-end checks (profile, validate, torchrun runs; what CI runs)
#   make figures  regenerates the README's pictures into docs/img/
#   make reference  regenerates reference/TABLES.md (our predictions against every published reference table)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-all fuzz lint bench figures clean reference

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[plot]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[torch,dev,plot]"
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/clusterplan hw list
	$(BIN)/clusterplan plan --model llama3.1-70b --cluster dgx-h100:8 --gbs 512 --seq 8192 --top 3 --tokens 1e12
	$(BIN)/clusterplan estimate --model llama3.1-70b --cluster dgx-h100:8 \
	  --layout "tp=8,pp=4,mbs=1,gbs=512,seq=8192,sp=1,recompute=selective"

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The long fuzzing run: 400 seeded examples per property instead of make test's 12 (same seeds every run).
fuzz: $(VENV)/.installed-dev
	CLUSTERPLAN_FUZZ_EXAMPLES=400 $(BIN)/python -m pytest -q tests/test_fuzz.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

figures: $(VENV)/.installed
	$(BIN)/clusterplan estimate --model llama3.1-70b --cluster dgx-h100:8 --quiet --plot docs/img/estimate.png \
	  --layout "tp=8,pp=4,vpp=2,mbs=1,gbs=32,seq=8192,sp=1,recompute=selective" > /dev/null
	$(BIN)/clusterplan estimate --model llama3.1-70b --cluster dgx-h100:8 --quiet --plot docs/img/estimate_zb.png \
	  --layout "tp=8,pp=4,mbs=1,gbs=32,seq=8192,sp=1,recompute=selective,schedule=zb" > /dev/null
	$(BIN)/clusterplan plan --model llama3.1-70b --cluster dgx-h100:64 --gbs 512 --seq 8192 --tokens 15e12 \
	  --objective pareto --quiet --plot docs/img/pareto.png > /dev/null
	mkdir -p build
	$(BIN)/clusterplan experts synth --model deepseek-v3 --layers 12 --out build/figures-ds.npz 2> /dev/null
	$(BIN)/clusterplan experts --model deepseek-v3 --cluster dgx-h100:8 --stats build/figures-ds.npz \
	  --plot docs/img/experts.png > /dev/null 2>&1
	$(BIN)/clusterplan serve-estimate --model llama3.1-70b --gpu H100 --tp 4 --rate 4 --input-len 2000 \
	  --output-len 300 --quiet --plot docs/img/serve_estimate.png > /dev/null
	$(BIN)/clusterplan serve-plan --model llama3.1-8b --rate 20 --input-len lognormal:6.5:0.8 --output-len 256 \
	  --ttft-ms 500 --tpot-ms 50 --quiet --plot docs/img/serve_plan.png > /dev/null

reference: $(VENV)/.installed
	$(BIN)/python -m clusterplan.reference --out reference/TABLES.md
	$(BIN)/python -m clusterplan.reference.intervals --write

bench: $(VENV)/.installed
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f; done

clean:
	rm -rf $(VENV) build *.egg-info
