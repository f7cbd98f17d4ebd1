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

ENGINE_SRC := $(wildcard engine/*.c)
AGENT_SRC  := $(filter-out agent/main.c,$(wildcard agent/*.c))
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
AGENT_OBJ  := $(AGENT_SRC:%.c=$(BUILD)/%.o)
TEST_SRC   := $(wildcard tests/unit/test_*.c)
TEST_BIN   := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
WORKLOADS  := $(patsubst tests/workloads/%.c,$(BUILD)/workloads/%,$(wildcard tests/workloads/*.c))

VERSION  := $(shell cat VERSION 2>/dev/null || echo 0.1.0)
CFLAGS   += -DPROFILER_AGENT_VERSION='"$(VERSION)"'

HOOKLIB  := $(BUILD)/libprofiler-agent-memhook.so

.PHONY: all check unit-check sanitize-check integration-check bench clean
all: $(BUILD)/profiler-agent $(HOOKLIB) $(WORKLOADS)

$(BUILD)/%.o: %.c $(wildcard engine/*.h agent/*.h)
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
$(HOOKLIB): $(wildcard engine/memhook/*.c engine/memhook/*.S engine/memhook/*.h) engine/memring.h
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

clean:
	rm -rf build build-san
