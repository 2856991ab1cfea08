# ngx_http_stale_cache_module: build, test, run, bench.
#
# On a fresh Debian 12 machine `make run` and `make test` are all you type: both install what
# is missing (scripts/deps.sh) and build the module against the installed nginx.

SHELL := /bin/bash
ROOT := $(CURDIR)
BUILD := $(ROOT)/build
PROFILE ?= release
CARGO_PROFILE_DIR := $(if $(filter release,$(PROFILE)),release,debug)
CARGO_PROFILE_FLAG := $(if $(filter release,$(PROFILE)),--release,)

# The nginx source the module is compiled against. By default the packaged one
# (nginx-dev ships headers and configure flags under /usr/share/nginx/src), configured with
# the packaged binary's own flags so the module signature matches. Set NGINX_SOURCE_DIR to
# build against another tree; it is configured with --with-compat and NGINX_CONFIGURE_ARGS
# unless NGINX_BUILD_DIR (its objs/ folder) already holds ngx_auto_config.h.
PACKAGED_NGINX_SRC := /usr/share/nginx/src
ifdef NGINX_SOURCE_DIR
  NGINX_BUILD_DIR ?= $(NGINX_SOURCE_DIR)/objs
  CONFIGURE_NGINX := cd $(NGINX_SOURCE_DIR) && ./configure --with-compat $(NGINX_CONFIGURE_ARGS)
else
  NGINX_SOURCE_DIR := $(BUILD)/nginx
  NGINX_BUILD_DIR := $(NGINX_SOURCE_DIR)/objs
  CONFIGURE_NGINX := rm -rf $(NGINX_SOURCE_DIR) && cp -r $(PACKAGED_NGINX_SRC) $(NGINX_SOURCE_DIR) \
    && cd $(NGINX_SOURCE_DIR) && source ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}" >configure.log
endif
# Passed to cargo explicitly rather than exported, so that a recursive make still tells a
# user-given NGINX_SOURCE_DIR from the packaged default.
CARGO := NGINX_SOURCE_DIR=$(NGINX_SOURCE_DIR) NGINX_BUILD_DIR=$(NGINX_BUILD_DIR) cargo

MODULE_SO := $(BUILD)/ngx_http_stale_cache_module.so
CARGO_SO := $(ROOT)/target/$(CARGO_PROFILE_DIR)/libngx_http_stale_cache_module.so

.PHONY: all deps module test unit prove run bench bench-smoke lint fuzz clean

all: module

deps:
	@scripts/deps.sh

$(NGINX_BUILD_DIR)/ngx_auto_config.h:
	@mkdir -p $(BUILD)
	$(CONFIGURE_NGINX)

module: $(NGINX_BUILD_DIR)/ngx_auto_config.h
	$(CARGO) build $(CARGO_PROFILE_FLAG) --lib
	@mkdir -p $(BUILD)
	@# Replace, never rewrite in place: a running nginx has the old file mapped.
	cp $(CARGO_SO) $(MODULE_SO).tmp && mv -f $(MODULE_SO).tmp $(MODULE_SO)
	@echo "built $(MODULE_SO)"

unit: $(NGINX_BUILD_DIR)/ngx_auto_config.h
	$(CARGO) test --lib

prove: module
	STALE_CACHE_MODULE=$(MODULE_SO) prove -r t

test: deps
	$(MAKE) unit prove

lint: $(NGINX_BUILD_DIR)/ngx_auto_config.h
	cargo fmt --check
	$(CARGO) clippy --lib -- -D warnings

run: deps
	$(MAKE) module
	nginx-conf/run.sh

bench: deps
	$(MAKE) module PROFILE=release
	bench/run.sh

# Seconds-long run of the same bench: proves it still works (CI), measures nothing.
bench-smoke: module
	BENCH_SMOKE=1 bench/run.sh

# Coverage-guided fuzzing of the RESP reader (fuzz/, see README). Not part of `test`: it
# needs nightly and runs for minutes. One fuzzer process at a time, FUZZ_SECONDS per
# target; new inputs go to fuzz/corpus (ignored by git), crashes to fuzz/artifacts.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= framer value_reader bulk_body parse_reply integer_reply

fuzz:
	@rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && for target in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$target && \
	  cargo +nightly fuzz run $$target corpus/$$target seeds/$$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

clean:
	cargo clean
	rm -rf $(BUILD) t/servroot
