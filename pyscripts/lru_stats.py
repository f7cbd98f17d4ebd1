"""profiler-agent's lru_stats, run inside a Python process: the agent copies this file into the
target's /tmp and has the interpreter run it at a safe point (between bytecodes, holding the GIL),
after _prelude.py, whose main() calls work() with the input; it is never imported. It finds every
functools.lru_cache wrapper and, when the lru-dict module is already loaded, every lru.LRU among
the objects the garbage collector tracks, and writes their statistics as JSON. Its limits come
from the input file, as data. It stops at the object or time limit and says so, runs no code of
the target's objects beyond cache_info() and get_stats(), and imports nothing but json.
"""


def describe(func):
    """repr() of plain functions (as the Profiler logs them); a generic form for other callables,
    whose own __repr__ could do anything."""
    import types

    if type(func) in (types.FunctionType, types.BuiltinFunctionType, types.MethodType):
        return repr(func)
    return "<%s object at %#x>" % (type(func).__name__, id(func))


def absfile(func):
    """What inspect.getabsfile gives for a function: its code's file, made absolute."""
    import os
    import types

    if type(func) is not types.FunctionType:
        return None
    return os.path.normcase(os.path.abspath(func.__code__.co_filename))


def work(limits, started):
    import functools
    import sys

    wrapper = functools._lru_cache_wrapper
    lru_module = sys.modules.get("lru")
    lru_type = vars(lru_module).get("LRU") if lru_module is not None else None
    caches = []

    def visit(obj):
        if type(obj) is wrapper:
            info = obj.cache_info()
            func = vars(obj).get("__wrapped__")
            caches.append({"kind": "lru_cache", "name": describe(func),
                           "file": absfile(func), "hits": info.hits, "misses": info.misses,
                           "maxsize": info.maxsize, "currsize": info.currsize})
        else:
            hits, misses = obj.get_stats()
            caches.append({"kind": "LRU", "name": repr(lru_type), "file": None,
                           "hits": hits, "misses": misses})
        return len(caches) >= limits["max_caches"]

    wanted = (wrapper,) if lru_type is None else (wrapper, lru_type)
    scanned, stopped = scan_objects(limits, started, wanted, visit)
    if stopped is None and len(caches) >= limits["max_caches"]:
        stopped = "stopped at %d caches (the cache limit)" % len(caches)
    return {"caches": caches, "scanned": scanned, "stopped": stopped}
