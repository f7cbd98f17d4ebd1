# profiler-agent build. `make` builds build/profiler-agent; `make check` runs every test and
# check: formatting, lint, the unit tests, the integration tests, both again under ASan+UBSan and
# under ThreadSanitizer. `make SANITIZER=address,undefined` builds everything sanitized into
# build-san/. Figures that depend on the machine's speed are in `make bench`, not in the tests.

CC       ?= gcc
PYTHON   ?= /usr/bin/python3
PKGS     := libmosquitto json-c libunwind-generic libdw libelf sqlite3 zlib
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -fno-omit-frame-pointer \
            $(shell pkg-config --cflags $(PKGS)) -Iengine -Iagent
LDLIBS   += $(shell pkg-config --libs $(PKGS)) -lpthread -lm

ifdef SANITIZER
BUILD    ?= $(if $(filter thread,$(SANITIZER)),build-tsan,build-san)
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
# UNIT_ONLY names the unit programs to build and run (all by default); UNIT_SKIP leaves some out.
TEST_BIN   := $(filter-out $(UNIT_SKIP:%=$(BUILD)/tests/%),$(if $(UNIT_ONLY), \
                  $(UNIT_ONLY:%=$(BUILD)/tests/%),$(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)))
WORKLOADS  := $(patsubst tests/workloads/%.c,$(BUILD)/workloads/%,$(wildcard tests/workloads/*.c)) \
              $(BUILD)/workloads/allocs_musl

VERSION  := $(shell cat VERSION 2>/dev/null || echo 0.1.0)
CFLAGS   += -DPROFILER_AGENT_VERSION='"$(VERSION)"'

# Installed layout (`make install PREFIX=/usr DESTDIR=/tmp/root`). The agent finds its schemas,
# Python scripts and hook library beside its executable first (a build tree), then here.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib/profiler-agent
DATADIR    ?= $(PREFIX)/share/profiler-agent
MANDIR     ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UNITDIR    ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
CFLAGS     += -DPROFILER_AGENT_LIBDIR='"$(LIBDIR)"' -DPROFILER_AGENT_SCHEMADIR='"$(DATADIR)/schemas"' \
              -DPROFILER_AGENT_PYSCRIPTDIR='"$(DATADIR)/pyscripts"'

HOOKLIB  := $(BUILD)/libprofiler-agent-memhook.so
HOOKLIB_MUSL := $(BUILD)/libprofiler-agent-memhook-musl.so
MUSL_CC  ?= musl-gcc

.PHONY: all check unit-check sanitize-check tsan-check integration-check format-check lint bench \
        clean install deb FORCE
all: $(BUILD)/profiler-agent $(HOOKLIB) $(HOOKLIB_MUSL) $(WORKLOADS)

# The compiled-in paths change with PREFIX: rebuild the objects that use them when it does.
$(BUILD)/agent/main.o $(BUILD)/agent/actions/memory.o $(BUILD)/agent/inside.o: \
    $(BUILD)/paths.stamp
$(BUILD)/paths.stamp: FORCE
	@mkdir -p $(dir $@)
	@echo '$(LIBDIR) $(DATADIR)' | cmp -s - $@ || echo '$(LIBDIR) $(DATADIR)' > $@

# Each object's .d names the headers it included (-MMD), each with an empty rule (-MP) so a
# deleted header does not stop the build: a changed header rebuilds exactly what uses it. The
# Makefile is a prerequisite too, since it holds the flags; that also rebuilds, once, objects
# built before there were .d files.
DEPFLAGS := -MMD -MP
$(BUILD)/%.o: %.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) -c $< -o $@

$(BUILD)/libengine.a: $(ENGINE_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/libagent.a: $(AGENT_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/profiler-agent: $(BUILD)/agent/main.o $(BUILD)/libagent.a $(BUILD)/libengine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The library `memory` loads into targets: never sanitized (a target has no sanitizer runtime),
# libc its only dependency, nothing exported but its three entry points
# (memhook_start, memhook_stop, memhook_release). Built twice: against
# glibc, and against musl for the processes of Alpine images (Debian's musl-gcc).
HOOK_SRC   := $(wildcard engine/memory/hook/*.c engine/memory/hook/*.S engine/memory/hook/*.h) \
              engine/memory/memring.h
HOOK_FLAGS := -std=gnu11 -O2 -g -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror \
              -D_GNU_SOURCE -Wl,-z,defs -Iengine
$(HOOKLIB): $(HOOK_SRC)
	@mkdir -p $(dir $@)
	$(CC) $(HOOK_FLAGS) -o $@ $(filter %.c %.S,$^)

$(HOOKLIB_MUSL): $(HOOK_SRC)
	@mkdir -p $(dir $@)
	$(MUSL_CC) $(HOOK_FLAGS) -o $@ $(filter %.c %.S,$^)

# Test workloads stand for the binaries users profile: Debian builds without frame pointers.
$(BUILD)/workloads/%: tests/workloads/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -g -fomit-frame-pointer -Wall -Wextra -Werror -o $@ $< -lpthread

# A static binary: the memory action cannot inject into it and must fall back to uprobes.
$(BUILD)/workloads/allocs_static: tests/workloads/allocs_static.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -g -fomit-frame-pointer -static -Wl,--eh-frame-hdr -Wall -Wextra -Werror \
	    -o $@ $< -lpthread

# Linked with musl, whose C library has no CFI, as every program in an Alpine image: musl-gcc's
# specs leave out the .eh_frame_hdr that Alpine's own toolchain gives every program. musl_NAME
# is written for musl; allocs_musl is allocs built against it, for the hooks' musl build.
define musl_workload
	@mkdir -p $(dir $@)
	$(MUSL_CC) -std=gnu11 -O2 -g -fomit-frame-pointer -Wl,--eh-frame-hdr -Wall -Wextra -Werror \
	    -o $@ $< -lpthread
endef
$(BUILD)/workloads/musl_%: tests/workloads/musl_%.c
	$(musl_workload)
$(BUILD)/workloads/allocs_musl: tests/workloads/allocs.c
	$(musl_workload)

# Not position-independent and taking malloc's address, as Debian's python3.11: malloc gets a
# canonical PLT entry in the executable, which the hooks must tell from libc's malloc.
$(BUILD)/workloads/canonical_plt: tests/workloads/canonical_plt.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -g -fomit-frame-pointer -fno-pie -no-pie -Wall -Wextra -Werror -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c Makefile $(BUILD)/libagent.a $(BUILD)/libengine.a $(WORKLOADS) $(HOOKLIB) \
                  $(HOOKLIB_MUSL)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) -MF $@.d -MT $@ $(LDFLAGS) -o $@ $< $(BUILD)/libagent.a \
	    $(BUILD)/libengine.a $(LDLIBS) -lcmocka

-include $(ENGINE_OBJ:.o=.d) $(AGENT_OBJ:.o=.d) $(BUILD)/agent/main.d $(TEST_BIN:=.d)

# Every unit program runs, failing or not; the failures are listed at the end.
unit-check: $(TEST_BIN)
	@failed=; for t in $(TEST_BIN); do echo "== $$t"; BUILD=$(BUILD) $$t || failed="$$failed $$t"; \
	done; n=$$(echo $$failed | wc -w); \
	echo "unit-check: $$(($(words $(TEST_BIN)) - n)) passed, $$n failed"; \
	for t in $$failed; do echo "FAILED: $$t"; done; test $$n = 0

# The integration tests run on PYTEST_JOBS workers (pytest-xdist): each test has its own broker
# on a free port and its own directory, and most of their time is spent waiting, so two workers
# take 0.6 of the time of one (213 s to 128 s under ASan) and pay for tsan-check.
PYTEST_JOBS ?= 2
PYTEST      := $(PYTHON) -m pytest -q -n $(PYTEST_JOBS) --dist loadgroup

# The unit tests and the integration tests again, against a daemon built with ASan and UBSan.
# BUILD is given to the inner make explicitly: a BUILD on the command line would win otherwise.
# Some tests run once, in integration-check, to keep `make check` under CI's half hour: the
# RabbitMQ cluster's (most of a minute starting and stopping Erlang nodes); the files opened in
# Chromium and go tool pprof (test_formats, test_diffgraph: their writers run under ASan in
# test_formats_extra and test_diffgraph.c, and in the fuzzers); the ring's release (test_memhook
# runs memprof_release under ASan), whose tests wait out its grace period; and the 8.5 million
# object heap, whose test times the target, not the agent. Failover and 3.1.1 sessions run under
# ASan in test_fleet and test_bridge; the fallback to 3.1.1 when a broker closes on MQTT 5 only
# on the plain build. Python targets in a PID namespace (the same reader, pids translated) and
# the Python profiles whose shares are held to 5 points against the program's own clock: under
# ASan the agent is several times slower at 999 Hz, and once gave 76/24 for 70/30; the plain
# pass holds the shares, and the reader runs under ASan in every other Python test.
SAN_BUILD  ?= build-san
SAN_SKIP   := $(addprefix --ignore=tests/integration/,test_cluster.py test_formats.py \
                  test_diffgraph.py test_memory_release.py) \
              -k 'not test_heap_beyond_the_bounds and not pidns and not of_one_moment and \
                  not test_wall_profile_counts_waiting'
sanitize-check:
	$(MAKE) SANITIZER=address,undefined BUILD=$(SAN_BUILD) all unit-check
	BUILD=$(SAN_BUILD) $(PYTEST) tests/integration $(SAN_SKIP)

# The same under ThreadSanitizer, for what threads share: the agent's job threads, its logger
# threads, libmosquitto's network thread, the atomic counters. Every process writes its reports
# to $(TSAN_BUILD)/tsan/ (a test may not look at the agent's stderr), and any report fails the
# check. tsan.supp holds the races inside third-party libraries, each said why it is benign.
# Unit programs under TSan: only those whose tests run engine code on several threads at once
# (the recorder's ring written by one thread and read by others; targets resolved by four threads
# through one cache). The engine starts no thread of its own, and the other programs run it on
# one, where TSan has nothing to watch and took 200 s of CI's half hour.
TSAN_UNITS ?= test_recorder test_target
# Integration tests under TSan: only those where threads meet (commands overlapping, jobs
# cancelled and stopped, the broker lost and found, loggers); the rest run one command at a time,
# which the ASan build covers, and all of them would double the time of `make check`. They run
# on one worker: TSan makes the agent several times slower, and two would meet their timeouts.
# Left out: the one that dumps a thread stuck in vfork and expects the other thread's stack. The
# snapshot's tracer, a child forked from the agent, gives up on a thread that will not stop when
# its SIGALRM handler runs; TSan defers signal handlers in such a child and never runs it, so
# there the parent's own deadline kills the tracer and the dump fails whole instead.
TSAN_BUILD ?= build-tsan
TSAN_TESTS ?= tests/integration/test_concurrency.py tests/integration/test_lifecycle.py \
              tests/integration/test_faults.py tests/integration/test_objects.py \
              -k 'not test_cheap_commands_are_answered_while_a_dump_runs'
TSAN_ENV   := TSAN_OPTIONS="suppressions=$(CURDIR)/tsan.supp second_deadlock_stack=1 \
              log_path=$(CURDIR)/$(TSAN_BUILD)/tsan/report"
tsan-check:
	rm -rf $(TSAN_BUILD)/tsan
	$(TSAN_ENV) $(MAKE) SANITIZER=thread BUILD=$(TSAN_BUILD) UNIT_ONLY="$(TSAN_UNITS)" all unit-check
	$(TSAN_ENV) BUILD=$(TSAN_BUILD) $(PYTHON) -m pytest -q $(TSAN_TESTS)
	@if ls $(TSAN_BUILD)/tsan/report.* >/dev/null 2>&1; then \
	    cat $(TSAN_BUILD)/tsan/report.*; echo "tsan-check: data races reported (above)"; exit 1; fi

integration-check: all
	BUILD=$(BUILD) $(PYTEST) tests/integration

# Formatting: the files that clang-format, with .clang-format, would change.
CLANG_FORMAT ?= clang-format
FORMAT_SRC   := $(shell find engine agent tests/unit tests/fuzz tests/workloads -name '*.[ch]')
format-check:
	@out=$$($(CLANG_FORMAT) --dry-run --Werror $(FORMAT_SRC) 2>&1) || { \
	    files=$$(echo "$$out" | sed -n 's/^\([^ :]*\):[0-9]*:[0-9]*: error: code should be clang-formatted.*/\1/p' | sort -u); \
	    echo "format-check: clang-format -i would change:" $${files:-"(nothing listed; it said:)"} >&2; \
	    [ -n "$$files" ] || echo "$$out" >&2; exit 1; }

# Static analysis of what ships: cppcheck's error class (always on: out-of-bounds, leaks, null
# and uninitialised reads) plus its warning class (suspicious logic, wrong format arguments) and
# portability class (sizes and casts that change with the ABI); its style and performance
# classes are taste, left to review. cppcheck.supp lists its false positives, each said why.
CPPCHECK ?= cppcheck
lint:
	$(CPPCHECK) -q -j$$(nproc) --std=c11 -D_GNU_SOURCE -Iengine -Iagent --enable=warning,portability \
	    --suppressions-list=cppcheck.supp --inline-suppr --error-exitcode=1 engine agent

check: format-check lint all unit-check sanitize-check integration-check tsan-check

bench: all
	$(PYTHON) bench/frames.py
	$(PYTHON) bench/roundtrip.py
	$(PYTHON) bench/cpu_profile.py
	$(PYTHON) bench/stripped.py
	$(PYTHON) bench/unwind_cost.py
	$(PYTHON) bench/recorder.py
	$(PYTHON) bench/memory.py
	$(PYTHON) bench/object_sources.py
	$(PYTHON) bench/fleet.py
	$(PYTHON) bench/python.py
	$(PYTHON) bench/python_inside.py
	$(PYTHON) bench/discovery.py

# The daemon's config keeps its state under /var/lib/profiler-agent (the unit's StateDirectory);
# an existing config is never overwritten.
install: $(BUILD)/profiler-agent $(HOOKLIB) $(HOOKLIB_MUSL)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(DATADIR)/schemas \
	    $(DESTDIR)$(DATADIR)/pyscripts \
	    $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(SYSCONFDIR)/profiler-agent $(DESTDIR)$(UNITDIR)
	install -m 0755 $(BUILD)/profiler-agent $(DESTDIR)$(BINDIR)/profiler-agent
	install -m 0644 $(HOOKLIB) $(HOOKLIB_MUSL) $(DESTDIR)$(LIBDIR)/
	install -m 0644 schemas/*.json $(DESTDIR)$(DATADIR)/schemas/
	install -m 0644 pyscripts/*.py $(DESTDIR)$(DATADIR)/pyscripts/
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
	cp -r Makefile VERSION config.example agent engine schemas pyscripts packaging \
	    $(DEBTMP)/profiler-agent/
	cp -r packaging/debian $(DEBTMP)/profiler-agent/debian
	cd $(DEBTMP)/profiler-agent && dpkg-buildpackage -us -uc -b
	mv $(DEBTMP)/profiler-agent_*.deb $(BUILD)/
	rm -rf $(DEBTMP)

clean:
	rm -rf build $(SAN_BUILD) $(TSAN_BUILD) build-fuzz

# libFuzzer targets (tests/fuzz/): the agent and engine sources compiled again by clang,
# instrumented, into build-fuzz/; `make fuzz` runs each target FUZZ_SECONDS on its seed corpus
# (new inputs go to build-fuzz/corpus/, crashes to build-fuzz/crash-*).
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
# CI repeats the same search, so a landing never hangs on luck; FUZZ_SEED=0 picks a random one.
FUZZ_SEED    ?= 20261125
FUZZ_BUILD   := build-fuzz
FUZZ_CFLAGS   = $(CFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_ENGINE_OBJ := $(ENGINE_SRC:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_OBJ     := $(FUZZ_ENGINE_OBJ) $(AGENT_SRC:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_BIN     := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(wildcard tests/fuzz/fuzz_*.c))

# The targets over what a profiled process controls need the engine alone; what a target links
# leaves out a source it includes to reach its statics (fuzz_perf: sampler_perf.c's decoder).
FUZZ_ENGINE_BIN := $(FUZZ_BUILD)/fuzz_procfs $(FUZZ_BUILD)/fuzz_elf $(FUZZ_BUILD)/fuzz_perf \
                   $(FUZZ_BUILD)/fuzz_cfi
FUZZ_LINK     = $(FUZZ_OBJ)
$(FUZZ_ENGINE_BIN): FUZZ_LINK = $(FUZZ_ENGINE_OBJ)
$(FUZZ_BUILD)/fuzz_perf: FUZZ_LINK = $(filter-out %/sampler_perf.o,$(FUZZ_ENGINE_OBJ))
FUZZ_LD       = $(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -DFUZZ_SCHEMA_DIR='"$(CURDIR)/schemas"' \
                    -o $@ $< $(FUZZ_LINK) $(LDLIBS)

.PHONY: fuzz
# Made through a pattern rule, the objects would be intermediate and deleted after the first
# link, before their .d files exist: the next `make fuzz` would compile everything again.
.SECONDARY: $(FUZZ_OBJ)
$(FUZZ_BUILD)/%.o: %.c Makefile
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(DEPFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
-include $(FUZZ_OBJ:.o=.d)

$(FUZZ_ENGINE_BIN): $(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_ENGINE_OBJ)
	$(FUZZ_LD)

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_OBJ)
	$(FUZZ_LD)

fuzz: $(FUZZ_BIN)
	@set -e; for t in $(FUZZ_BIN); do n=$${t##*/fuzz_}; mkdir -p $(FUZZ_BUILD)/corpus/$$n; \
	    echo "== $$t, $(FUZZ_SECONDS) s"; \
	    $$t -max_total_time=$(FUZZ_SECONDS) -seed=$(FUZZ_SEED) -timeout=30 -print_final_stats=1 \
	        -artifact_prefix=$(FUZZ_BUILD)/ \
	        $$(test -f tests/fuzz/$$n.dict && echo -dict=tests/fuzz/$$n.dict) \
	        $(FUZZ_BUILD)/corpus/$$n tests/fuzz/corpus/$$n; done
