"""Process-wide tuning for serving, applied by the lifespan once the app's resources are open.

Each setting here was kept because ``bench/`` in the template measured it under load
(docs/performance.md):

- **Garbage collector.** After startup the heap holds hundreds of thousands of long-lived
  objects (modules, models, routes, compiled SQL). ``gc.freeze()`` moves them out of the
  collector's sight, so a full collection no longer stalls every request in flight for
  ~50 ms; a larger first-generation threshold runs the young collection less often on a
  request-heavy heap (Instagram's and CPython's documented advice for servers).
- **Logging.** Every log record would otherwise look up the caller's file and line, the
  thread and the process: fields the JSON lines never print (the logging HOWTO,
  "Optimization").
"""

import gc
import logging

# Young collections every 10,000 net allocations instead of 700; older ones 5x and 10x rarer.
GC_THRESHOLDS = (10_000, 50, 100)


def tune_for_serving() -> None:
    """Freeze what startup allocated and make per-request logging cheaper."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the documented switch for caller lookup
