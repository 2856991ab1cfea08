# ngx_http_stale_cache_module: build, test, run, bench.
#
# On a fresh Debian 12 machine with Rust (>= Cargo.toml's rust-version, from rustup) `make run`
# and `make test` are all you type: both install what is missing (scripts/deps.sh, which says
# how to get Rust when it is missing) and build the module against the installed nginx.

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
  # A release tarball has ./configure; a git checkout of nginx has only auto/configure, which
  # is run from the top of the tree the same way.
  CONFIGURE_NGINX := cd $(NGINX_SOURCE_DIR) && $$(if [ -x configure ]; then echo ./configure; \
    else echo auto/configure; fi) --with-compat $(NGINX_CONFIGURE_ARGS)
  # The suite tests the nginx the module is built for: the binary of that tree by default.
  DEFAULT_TEST_NGINX := $(NGINX_SOURCE_DIR)/objs/nginx
  # redis2/HttpRedis (t/lib/RefModules.pm) are built for this tree too.
  TEST_SOURCE_ENV := TEST_NGINX_SOURCE_DIR=$(NGINX_SOURCE_DIR)
else
  NGINX_SOURCE_DIR := $(BUILD)/nginx
  NGINX_BUILD_DIR := $(NGINX_SOURCE_DIR)/objs
  CONFIGURE_NGINX := rm -rf $(NGINX_SOURCE_DIR) && cp -r $(PACKAGED_NGINX_SRC) $(NGINX_SOURCE_DIR) \
    && cd $(NGINX_SOURCE_DIR) && source ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}" >configure.log
endif
DEFAULT_TEST_NGINX ?= /usr/sbin/nginx
# NGINX_BINARY: the nginx the `.t` suite runs (default: the one the module is built for). Its
# srcache/set-misc/echo/ndk modules come from TEST_NGINX_MODULES_DIR (default: the packaged
# ones, which only load into the packaged nginx).
NGINX_BINARY ?= $(DEFAULT_TEST_NGINX)
TEST_ENV := TEST_NGINX_BINARY=$(NGINX_BINARY) $(TEST_SOURCE_ENV) \
  $(if $(TEST_NGINX_MODULES_DIR),TEST_NGINX_MODULES_DIR=$(TEST_NGINX_MODULES_DIR))

# Passed to cargo explicitly rather than exported, so that a recursive make still tells a
# user-given NGINX_SOURCE_DIR from the packaged default.
CARGO := NGINX_SOURCE_DIR=$(NGINX_SOURCE_DIR) NGINX_BUILD_DIR=$(NGINX_BUILD_DIR) cargo

MODULE_SO := $(BUILD)/ngx_http_stale_cache_module.so
CARGO_SO := $(ROOT)/target/$(CARGO_PROFILE_DIR)/libngx_http_stale_cache_module.so

.PHONY: all deps module test unit prove check-test-nginx stress valgrind run bench bench-callgrind bench-smoke lint deb \
  fuzz clean conformance

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

prove: module check-test-nginx
	STALE_CACHE_MODULE=$(MODULE_SO) $(TEST_ENV) prove -r t

# Stops before the suite when it could not test the nginx the module was built for: every
# block would fail on the version check otherwise.
check-test-nginx: $(NGINX_BUILD_DIR)/ngx_auto_config.h
	@built=$$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' $(NGINX_SOURCE_DIR)/src/core/nginx.h); \
	if [ ! -x "$(NGINX_BINARY)" ]; then \
	  echo "make: cannot test: the module is built for nginx $$built ($(NGINX_SOURCE_DIR))," \
	       "but $(NGINX_BINARY) does not exist. Build that nginx (make -C $(NGINX_SOURCE_DIR))" \
	       "or set NGINX_BINARY=/path/to/nginx-$$built." >&2; exit 1; fi; \
	tested=$$($(NGINX_BINARY) -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p'); \
	if [ "$$built" != "$$tested" ]; then \
	  echo "make: cannot test: the module is built for nginx $$built ($(NGINX_SOURCE_DIR))," \
	       "but NGINX_BINARY=$(NGINX_BINARY) is nginx $$tested. Set NGINX_BINARY to an nginx" \
	       "$$built, or NGINX_SOURCE_DIR to the source of $(NGINX_BINARY)." >&2; exit 1; fi; \
	if [ "$(NGINX_BINARY)" != /usr/sbin/nginx ] && [ -z "$(TEST_NGINX_MODULES_DIR)" ]; then \
	  echo "make: cannot test $(NGINX_BINARY) with the packaged srcache/set-misc/echo/ndk" \
	       "modules (they load only into /usr/sbin/nginx): build them for nginx $$built and" \
	       "set TEST_NGINX_MODULES_DIR to their folder." >&2; exit 1; fi

# The suite STRESS_RUNS times (default 5) with every core busy: see scripts/stress.sh.
stress: module
	STALE_CACHE_MODULE=$(MODULE_SO) scripts/stress.sh $(STRESS_RUNS)

test: deps
	$(MAKE) unit prove

# The hot-tier tests and the native Redis location baseline with every nginx under valgrind's
# memcheck (TEST_NGINX_VALGRIND, t/README.md): fails on any failed assertion, among them each
# file's "valgrind: 0 errors". Each file gets its own servroot, so the logs of all stay:
# t/servroot-valgrind/<file>/logs/valgrind.<pid>.log. The module is the release build, which
# has debug info (function names, inlined frames, lines).
VALGRIND_TESTS ?= t/097-hot.t t/010-redis-locations.t

valgrind: deps
	$(MAKE) module check-test-nginx
	@rc=0; for t in $(VALGRIND_TESTS); do \
	  servroot=$(ROOT)/t/servroot-valgrind/$$(basename $$t .t); \
	  echo "TEST_NGINX_VALGRIND=1 TEST_NGINX_SERVROOT=$$servroot prove $$t"; \
	  STALE_CACHE_MODULE=$(MODULE_SO) $(TEST_ENV) TEST_NGINX_VALGRIND=1 \
	    TEST_NGINX_SERVROOT=$$servroot prove $$t || rc=1; \
	done; exit $$rc

lint: $(NGINX_BUILD_DIR)/ngx_auto_config.h
	cargo fmt --check
	$(CARGO) clippy --lib -- -D warnings
	@# The nginx layer's shape: import circles of at most 3 files, files of at most 500 code lines.
	python3 scripts/layering.py

run: deps
	$(MAKE) module
	nginx-conf/run.sh

bench: deps
	$(MAKE) module PROFILE=release
	bench/run.sh
	bench/cluster.sh

# Instructions per fresh hit, plain srcache vs the module, counted by callgrind (repeatable on
# a busy machine): see bench/callgrind.sh for REDIS=ref, ROWS and N.
bench-callgrind: deps
	$(MAKE) module PROFILE=release
	bench/callgrind.sh

# Seconds-long run of the same bench: proves it still works (CI), measures nothing.
bench-smoke: module
	BENCH_SMOKE=1 bench/run.sh

# libnginx-mod-http-stale-cache_<version>_<arch>.deb in build/ (scripts/build-deb.sh). The package
# declares the installed nginx's ABI, so it only packages a release build of the default tree.
deb: deps
	$(if $(filter file,$(origin NGINX_SOURCE_DIR)),,$(error make deb packages the module built against the packaged nginx; unset NGINX_SOURCE_DIR))
	$(MAKE) module PROFILE=release
	scripts/build-deb.sh $(MODULE_SO) $(BUILD)

# The public HTTP cache test suite (npm package http-cache-tests, installed under
# build/conformance) against nginx-conf/http-cache.conf on private ports: prints the required
# and all tests passed, counted as cache-tests.fyi does (scripts/conformance.sh).
# CONFORMANCE_LIST_FAILING=1 lists the failing required tests; CONFORMANCE_ID=<id> runs one.
conformance: module
	STALE_CACHE_MODULE=$(MODULE_SO) NGINX_BINARY=$(NGINX_BINARY) scripts/conformance.sh

# Coverage-guided fuzzing of the RESP reader (fuzz/, see README). Not part of `test`: it
# needs nightly and runs for minutes. One fuzzer process at a time, FUZZ_SECONDS per
# target; new inputs go to fuzz/corpus (ignored by git), crashes to fuzz/artifacts.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= framer value_reader bulk_body parse_reply integer_reply cluster_redirect \
  cluster_slots

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
	rm -rf $(BUILD) t/servroot t/servroot-valgrind
