# The two quick-start commands (README): `make demo` and `make test`.
# Both create .venv and install what they need; torch is pinned by constraints.txt
# to the CPU build (an unpinned torch would download a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench mutation train-image clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[train,examples,dev]'
	touch $(STAMP)

# Train the digits CNN, export the bundle, check it (exit 0); then prove a perturbed
# copy is caught (check must exit 1, and says which output failed). Then the wine
# example: raw tabular columns through frozen preprocessing, checked stage by stage; then
# the text example: raw sentences through a frozen tokenizer into a BERT built from a config.
demo: $(STAMP)
	$(BIN)/bundle export examples/digits/train.py:make_spec -o artifacts/digits --force
	$(BIN)/bundle inspect artifacts/digits
	$(BIN)/bundle check artifacts/digits --json artifacts/digits-report.json
	$(BIN)/python examples/digits/perturb.py artifacts/digits artifacts/digits-perturbed
	$(BIN)/bundle check artifacts/digits-perturbed; code=$$?; \
	  if [ $$code -eq 1 ]; then echo "perturbed bundle caught (exit 1), as it must be"; \
	  else echo "perturbed bundle NOT caught (exit $$code)"; exit 1; fi
	$(BIN)/bundle export examples/wine/train.py:make_spec -o artifacts/wine --force
	$(BIN)/bundle check artifacts/wine
	$(BIN)/bundle export examples/text/train.py:make_spec -o artifacts/text --force
	$(BIN)/bundle check artifacts/text

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

# Mutation testing (docs/mutation.md): mutmut 3 over the modules that decide a verdict or guard the
# bundle ([tool.mutmut] in pyproject.toml), then the score per module. The example bundles the tests
# use are exported once, not once per mutant. About 5 minutes on 2 cores.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet 'mutmut==3.8.1'
	$(BIN)/python scripts/fixture_bundles.py .mutation-bundles
	rm -rf mutants
	PARITYBUNDLE_TEST_BUNDLES=$(CURDIR)/.mutation-bundles $(BIN)/mutmut run >mutation.log 2>&1 || (tail -c 3000 mutation.log; exit 1)
	$(BIN)/python scripts/mutation_report.py

# The training image (Dockerfile.train), built offline from a wheelhouse of everything it installs.
train-image: $(STAMP)
	$(BIN)/python -m pip download --quiet -c constraints.txt -d wheelhouse '.[train,examples]' 'setuptools>=68'
	docker build -f Dockerfile.train -t paritybundle-train .

clean:
	rm -rf $(VENV) artifacts wheelhouse mutants .mutation-bundles mutation.log
