# profiler-agent build. `make` builds build/profiler-agent; `make check` runs every test,
# including an ASan+UBSan build of the C unit tests. `make SANITIZER=address,undefined` builds
# everything sanitized into build-san/.

CC       ?= gcc
PYTHON   ?= /usr/bin/python3
PKGS     := libmosquitto json-c libunwind-generic libdw libelf sqlite3
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -fno-omit-frame-pointer \
            $(shell pkg-config --cflags $(PKGS)) -Iengine -Iagent
LDLIBS   += $(shell pkg-config --libs $(PKGS)) -lpthread -lm

ifdef SANITIZER
BUILD    ?= build-san
CFLAGS   += -fsanitize=$(SANITIZER) -fno-sanitize-recover=all
LDFLAGS  += -fsanitize=$(SANITIZER)
else
BUILD    ?= build
endif

ENGINE_SRC := $(wildcard engine/*/*.c)
AGENT_SRC  := $(filter-out agent/main.c,$(wildcard agent/*.c agent/*/*.c))
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
AGENT_OBJ  := $(AGENT_SRC:%.c=$(BUILD)/%.o)
TEST_SRC   := $(wildcard tests/unit/test_*.c)
TEST_BIN   := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
WORKLOADS  := $(patsubst tests/workloads/%.c,$(BUILD)/workloads/%,$(wildcard tests/workloads/*.c))

VERSION  := $(shell cat VERSION 2>/dev/null || echo 0.1.0)
CFLAGS   += -DPROFILER_AGENT_VERSION='"$(VERSION)"'

# Installed layout (`make install PREFIX=/usr DESTDIR=/tmp/root`). The agent finds its schemas
# and hook library beside its executable first (a build tree), then here.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib/profiler-agent
DATADIR    ?= $(PREFIX)/share/profiler-agent
MANDIR     ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UNITDIR    ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
CFLAGS     += -DPROFILER_AGENT_LIBDIR='"$(LIBDIR)"' -DPROFILER_AGENT_SCHEMADIR='"$(DATADIR)/schemas"'

HOOKLIB  := $(BUILD)/libprofiler-agent-memhook.so

.PHONY: all check unit-check sanitize-check integration-check bench clean install deb FORCE
all: $(BUILD)/profiler-agent $(HOOKLIB) $(WORKLOADS)

# The compiled-in paths change with PREFIX: rebuild the two objects that use them when it does.
$(BUILD)/agent/main.o $(BUILD)/agent/memory.o: $(BUILD)/paths.stamp
$(BUILD)/paths.stamp: FORCE
	@mkdir -p $(dir $@)
	@echo '$(LIBDIR) $(DATADIR)' | cmp -s - $@ || echo '$(LIBDIR) $(DATADIR)' > $@

$(BUILD)/%.o: %.c $(wildcard engine/*/*.h agent/*.h agent/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libengine.a: $(ENGINE_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/libagent.a: $(AGENT_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/profiler-agent: $(BUILD)/agent/main.o $(BUILD)/libagent.a $(BUILD)/libengine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The library `memory` loads into targets: never sanitized (a target has no sanitizer runtime),
# libc its only dependency, nothing exported but its two entry points.
$(HOOKLIB): $(wildcard engine/memory/hook/*.c engine/memory/hook/*.S engine/memory/hook/*.h) engine/memory/memring.h
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -g -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror \
	    -D_GNU_SOURCE -Wl,-z,defs -Iengine -o $@ $(filter %.c %.S,$^)

# Test workloads stand for the binaries users profile: Debian builds without frame pointers.
$(BUILD)/workloads/%: tests/workloads/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -g -fomit-frame-pointer -Wall -Wextra -Werror -o $@ $< -lpthread

# A static binary: the memory action cannot inject into it and must fall back to uprobes.
$(BUILD)/workloads/allocs_static: tests/workloads/allocs_static.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -g -fomit-frame-pointer -static -Wl,--eh-frame-hdr -Wall -Wextra -Werror \
	    -o $@ $< -lpthread

$(BUILD)/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h) $(BUILD)/libagent.a $(BUILD)/libengine.a $(WORKLOADS) $(HOOKLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libagent.a $(BUILD)/libengine.a $(LDLIBS) -lcmocka

unit-check: $(TEST_BIN)
	@set -e; for t in $(TEST_BIN); do echo "== $$t"; BUILD=$(BUILD) $$t; done

# The unit tests and the integration tests again, against a daemon built with ASan and UBSan.
sanitize-check:
	$(MAKE) SANITIZER=address,undefined all unit-check
	BUILD=build-san $(PYTHON) -m pytest -q tests/integration

integration-check: all
	$(PYTHON) -m pytest -q tests/integration

check: all unit-check sanitize-check integration-check

bench: all
	$(PYTHON) bench/frames.py
	$(PYTHON) bench/roundtrip.py
	$(PYTHON) bench/cpu_profile.py
	$(PYTHON) bench/memory.py
	$(PYTHON) bench/object_sources.py
	$(PYTHON) bench/fleet.py
	$(PYTHON) bench/python.py
	$(PYTHON) bench/discovery.py

# The daemon's config keeps its state under /var/lib/profiler-agent (the unit's StateDirectory);
# an existing config is never overwritten.
install: $(BUILD)/profiler-agent $(HOOKLIB)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(DATADIR)/schemas \
	    $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(SYSCONFDIR)/profiler-agent $(DESTDIR)$(UNITDIR)
	install -m 0755 $(BUILD)/profiler-agent $(DESTDIR)$(BINDIR)/profiler-agent
	install -m 0644 $(HOOKLIB) $(DESTDIR)$(LIBDIR)/
	install -m 0644 schemas/*.json $(DESTDIR)$(DATADIR)/schemas/
	install -m 0644 packaging/profiler-agent.8 $(DESTDIR)$(MANDIR)/man8/profiler-agent.8
	sed -e 's|/usr/bin/profiler-agent|$(BINDIR)/profiler-agent|' \
	    -e 's|/etc/profiler-agent/|$(SYSCONFDIR)/profiler-agent/|' \
	    packaging/profiler-agent.service > $(DESTDIR)$(UNITDIR)/profiler-agent.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/profiler-agent.service
	test -e $(DESTDIR)$(SYSCONFDIR)/profiler-agent/profiler-agent.conf || { \
	    sed -e 's|^output_dir = .*|output_dir = /var/lib/profiler-agent/profiles|' \
	        -e 's|^database = .*|database = /var/lib/profiler-agent/profiler-agent.db|' \
	        config.example > $(DESTDIR)$(SYSCONFDIR)/profiler-agent/profiler-agent.conf && \
	    chmod 0640 $(DESTDIR)$(SYSCONFDIR)/profiler-agent/profiler-agent.conf; }

# build/profiler-agent_VERSION_ARCH.deb: dpkg-buildpackage wants debian/ at the top of the
# source, so what the package is built from is copied to a scratch directory with
# packaging/debian there.
DEBTMP := $(BUILD)/deb-src
deb:
	test "$$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)" = "$(VERSION)" || \
	    { echo "packaging/debian/changelog is not at VERSION $(VERSION)" >&2; exit 1; }
	rm -rf $(DEBTMP) && mkdir -p $(DEBTMP)/profiler-agent
	cp -r Makefile VERSION config.example agent engine schemas packaging $(DEBTMP)/profiler-agent/
	cp -r packaging/debian $(DEBTMP)/profiler-agent/debian
	cd $(DEBTMP)/profiler-agent && dpkg-buildpackage -us -uc -b
	mv $(DEBTMP)/profiler-agent_*.deb $(BUILD)/
	rm -rf $(DEBTMP)

clean:
	rm -rf build build-san build-fuzz

# libFuzzer targets (tests/fuzz/): the agent and engine sources compiled again by clang,
# instrumented, into build-fuzz/; `make fuzz` runs each target FUZZ_SECONDS on its seed corpus
# (new inputs go to build-fuzz/corpus/, crashes to build-fuzz/crash-*).
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
# CI repeats the same search, so a landing never hangs on luck; FUZZ_SEED=0 picks a random one.
FUZZ_SEED    ?= 20261125
FUZZ_BUILD   := build-fuzz
FUZZ_CFLAGS   = $(CFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_OBJ     := $(ENGINE_SRC:%.c=$(FUZZ_BUILD)/%.o) $(AGENT_SRC:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_BIN     := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(wildcard tests/fuzz/fuzz_*.c))

.PHONY: fuzz
$(FUZZ_BUILD)/%.o: %.c $(wildcard engine/*/*.h agent/*.h agent/*/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -DFUZZ_SCHEMA_DIR='"$(CURDIR)/schemas"' \
	    -o $@ $^ $(LDLIBS)

fuzz: $(FUZZ_BIN)
	@set -e; for t in $(FUZZ_BIN); do n=$${t##*/fuzz_}; mkdir -p $(FUZZ_BUILD)/corpus/$$n; \
	    echo "== $$t, $(FUZZ_SECONDS) s"; \
	    $$t -max_total_time=$(FUZZ_SECONDS) -seed=$(FUZZ_SEED) -timeout=30 -print_final_stats=1 \
	        -artifact_prefix=$(FUZZ_BUILD)/ \
	        $$(test -f tests/fuzz/$$n.dict && echo -dict=tests/fuzz/$$n.dict) \
	        $(FUZZ_BUILD)/corpus/$$n tests/fuzz/corpus/$$n; done
