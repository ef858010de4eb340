# plankton — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ROOT   ?= ./artifacts
STAMP  := $(VENV)/.installed

RUFF_VERSION := $(shell sed -n 's/.*"ruff==\([^"]*\)".*/\1/p' pyproject.toml)
PYTEST := $(BIN)/python -m pytest
# pytest's exit 5 ("no tests collected") is a failure here, not a pass
NO_TESTS_FAIL = rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

.PHONY: install demo test test-all check durations bench clean lint format typecheck tools docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## make .venv and install the project with its test extras

demo: $(STAMP) ## every stage end to end on generated data into $(ROOT)
	ROOT=$(ROOT) BIN=$(BIN) bash scripts/demo.sh

test: $(STAMP) tools lint typecheck ## the everyday tier: lint, types, then every test not measured slow (tests/durations.json)
	$(PYTEST) -q -m "not slow"; $(NO_TESTS_FAIL)

test-all: $(STAMP) tools lint typecheck ## lint, types and the whole suite, slow tests included (what .ci/run runs)
	$(PYTEST) -q; $(NO_TESTS_FAIL)

check: $(STAMP) ## under a minute: ruff, the format check and the fast unit tests of one package (make check STAGE=lut)
	@bash scripts/check.sh "$(BIN)" "$(STAGE)"

durations: $(STAMP) tools ## rerun the whole suite and record each test's seconds in tests/durations.json (the tiers)
	$(PYTEST) -q --record-durations tests/durations.json; $(NO_TESTS_FAIL)

lint: ## ruff rules and the format check; needs only ruff (.venv's, else one installed into .tools/)
	@ruff=$$(bash scripts/ruff.sh "$(BIN)" "$(PYTHON)" "$(RUFF_VERSION)") && \
	$$ruff check plankton_core jobs tests bench scripts && $$ruff format --check plankton_core jobs tests bench scripts

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format plankton_core jobs tests bench scripts
	$(BIN)/ruff check --fix plankton_core jobs tests bench scripts

typecheck: $(STAMP) ## mypy over the library
	$(BIN)/mypy

tools: ## programs the tests need besides Python packages: installed here when root on Debian, else one line saying what to install
	@bash scripts/tools.sh

docs: $(STAMP) ## regenerate the usage lines of docs/commands.md from the commands' options
	$(BIN)/python scripts/readme_usage.py --write

bench: $(STAMP) ## speed figures, each a side-by-side ratio
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(ROOT) .pytest_cache

# ---- containers, Kubernetes Jobs, local kind cluster (docs/cluster.md) ----
IMAGE        ?= plankton:dev
KIND_CLUSTER ?= plankton
K8S_VALUES   ?= k8s/local/values.yaml
K8S_SET      ?=
KUBECTL_KIND  = kubectl --context kind-$(KIND_CLUSTER)
PKG_VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
GIT_COMMIT   := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SUBMIT        = $(BIN)/plankton submit --values $(K8S_VALUES) --set image=$(IMAGE) $(foreach s,$(K8S_SET),--set $(s))
# the stages come from the stage registry: `submit-STAGE` works for whatever `plankton k8s stages` lists
STAGES        = $(shell $(BIN)/plankton k8s stages)

# docker when it is installed, else podman (same Dockerfile, same arguments)
ENGINE       ?= $(if $(shell command -v docker 2>/dev/null),docker,podman)

.PHONY: image push image-tools image-test kind-up kind-load kind-down pipeline hadolint stages

image: ## build the one image of every stage as $(IMAGE), with version and git commit labels (docker, else podman)
	$(ENGINE) build --build-arg VERSION=$(PKG_VERSION) --build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(IMAGE) .

push: ## push $(IMAGE) to its registry (for a real cluster)
	$(ENGINE) push $(IMAGE)

image-tools: ## programs make image-test needs (podman, runc, debootstrap): installed here when root on Debian, else one line saying what to install
	@bash scripts/tools.sh image

image-test: $(STAMP) image-tools ## build the image with podman on a local debootstrap base from a host-filled wheelhouse (cached in ~/.cache/plankton/image-test), then run every stage's Job from it against a local S3 server
	BIN=$(BIN) bash scripts/image_test.sh

kind-up: ## local cluster: kind, MinIO + bucket, Pushgateway, kube-state-metrics, Prometheus with the alerts
	kind get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER) || kind create cluster --name $(KIND_CLUSTER) --config k8s/local/kind.yaml
	$(KUBECTL_KIND) apply -f k8s/local/config.yaml
	$(KUBECTL_KIND) apply -f k8s/local/minio.yaml -f k8s/local/pushgateway.yaml -f k8s/local/kube-state-metrics.yaml -f k8s/local/alerts.yaml -f k8s/local/prometheus.yaml
	$(KUBECTL_KIND) -n plankton wait --for=condition=Available deployment --all --timeout=300s
	$(KUBECTL_KIND) -n plankton wait --for=condition=Complete job/minio-bucket --timeout=300s
	@echo "MinIO http://localhost:19000 (console :19001), Prometheus http://localhost:19090/alerts, Pushgateway http://localhost:19091"

kind-load: ## copy $(IMAGE) into the kind nodes (nothing is pulled there)
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)

stages: | $(STAMP) ## what submit-STAGE takes: the tools run as Jobs (synth), then the registered stages in order
	@echo $(STAGES)

submit-%: | $(STAMP) ## run one stage (e.g. submit-supcon) as a Job in the current kube context and follow it
	$(SUBMIT) $*

pipeline: | $(STAMP) ## every stage as Jobs in order in the current kube context; up-to-date stages end at once
	$(SUBMIT) pipeline

kind-down: ## delete the local cluster
	kind delete cluster --name $(KIND_CLUSTER)

hadolint: | $(STAMP) ## lint the Dockerfile
	$(BIN)/hadolint Dockerfile
