# tidal - the two set-up commands are `make deps` and `make`; `make test` runs the suite.
#
#   make deps        install the Debian packages that are missing (root)
#   make             configure and build into build/
#   make quickstart  deps + build, then the quickstart job (examples/quickstart.yaml) into
#                    runs/quickstart: metrics.jsonl, summary.json, reward.svg
#   make staleness-study  deps + build, then the staleness study (examples/experiments/staleness.py)
#                    into runs/staleness, its table and plot into docs/experiments (about an hour)
#   make test        deps + build (warnings are errors) + every ctest label but gpu, then
#                    unit and integration again under ASan + UBSan (build-asan/)
#   make clean

BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=

# Everything the build and the tests need, by Debian package name. A name counts as present when a
# package of that name is installed or an installed package provides it (NodeSource's nodejs provides
# npm); A|B: either will do, A is installed when neither is (kubectl: Debian's kubernetes-client, or
# the kubectl package of Google's repository).
DEPS = cmake make gcc pkg-config clang libclang-rt-14-dev \
       libnats-dev nats-server libprotobuf-c-dev protobuf-c-compiler \
       libssl-dev openssl libjansson-dev libopenblas-openmp-dev python3-torch python3-jinja2 \
       libpcre2-dev libutf8proc-dev libyaml-dev libmicrohttpd-dev libcurl4-openssl-dev libzstd-dev librust-blake3-dev b3sum nodejs gnuplot-nox \
       prometheus nginx curl npm kubernetes-client|kubectl chromium

.PHONY: all deps build test test-asan quickstart staleness-study clean

all: build

deps:
	@have=" $$(dpkg-query -W -f='$${Status}|$${Package}, $${Provides}\n' 2>/dev/null | sed -n 's/^install ok installed|//p' \
	  | sed 's/ *([^)]*)//g' | tr ',\n' '  ' | tr -s ' ') "; \
	missing=""; for p in $(patsubst %,'%',$(DEPS)); do \
	  found=""; for alt in $$(echo $$p | tr '|' ' '); do \
	    case "$$have" in *" $$alt "*) found=1;; esac; \
	  done; \
	  [ -n "$$found" ] || missing="$$missing $${p%%|*}"; \
	done; \
	if [ -z "$$missing" ]; then echo "make deps: all packages present"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make deps: missing:$$missing - not root: run 'sudo make deps' or install them" >&2; exit 1; fi; \
	echo "make deps: installing:$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) $(CMAKE_ARGS)

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: deps
	cmake -S . -B $(BUILD) -DTIDAL_WERROR=ON $(CMAKE_ARGS)
	$(MAKE) build
	cd $(BUILD) && ctest --output-on-failure -LE gpu -j $(JOBS)
	$(MAKE) test-asan

test-asan:
	cmake -S . -B $(ASAN_BUILD) -DTIDAL_SANITIZE=ON -DTIDAL_CUDA=OFF -DTIDAL_WERROR=ON $(CMAKE_ARGS)
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ctest --output-on-failure -L 'unit|integration' -j $(JOBS)

quickstart: deps
	$(MAKE) build
	rm -rf runs/quickstart
	./$(BUILD)/tidal run examples/quickstart.yaml --out runs/quickstart
	@echo "make quickstart: runs/quickstart/summary.json, runs/quickstart/reward.svg"
	@echo "try the trained model: $(BUILD)/tidal generate --model runs/quickstart/checkpoints/step-300 --chat --prompt 925 --temperature 0 --max-tokens 3"

staleness-study: deps
	@$(MAKE) --no-print-directory build
	/usr/bin/python3 examples/experiments/staleness.py --tidal $(BUILD)/tidal --out runs/staleness --doc docs/experiments

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
