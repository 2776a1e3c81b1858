# iadgpt — top-level entry points. `make test` is what CI runs (via .ci/run).
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps configure build test demo fuzz bench clean

all: build

deps:
	bash scripts/install-deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

configure: $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: deps
	$(MAKE) build
	@test -d ../shared || { echo "error: ../shared (fixtures and data) not found beside the checkout" >&2; exit 2; }
	cd $(BUILD) && ctest --output-on-failure -j 1

# First contact (README quick start): procedural parts, tiny models from scratch, training,
# inspection of unseen parts, HTML report in demo-out/report/index.html. Needs nothing but Debian
# packages. The answers are the tiny LLM's; fails when the held-out Yes/No accuracy is below 90 %
# (95/100 measured on 2 cores, 96/100 with ATEN_CPU_CAPABILITY=avx512: src/demo/README.md).
DEMO_OUT ?= demo-out
# Only the program is built (not the test binaries): on the Zen 5 machines the whole target stays
# within 10 minutes at 300 LLM steps; on the Intel Xeon kind (family 6, model 207) the demo alone
# takes about 12 minutes at 450 steps, the default since 2026-12-04.
demo: deps
	$(MAKE) configure
	cmake --build $(BUILD) -j $(JOBS) --target iadgpt
	$(BUILD)/iadgpt demo --out $(DEMO_OUT) --min-accuracy 0.9

fuzz: deps
	cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DIADGPT_FUZZ=ON -DIADGPT_TESTS=OFF
	cmake --build build-fuzz -j $(JOBS) --target fuzz_safetensors fuzz_torch_zip fuzz_image

bench: build
	$(BUILD)/iadgpt bench encode --arch imagebind-huge
	$(BUILD)/iadgpt bench llm --arch tinyllama-1.1b

clean:
	rm -rf $(BUILD) build-fuzz
