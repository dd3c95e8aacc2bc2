"""Benchmarks of the observability layer against its anchors.

Run everything and rewrite ``docs/PERFORMANCE.md``::

    PYTHONPATH=. python -m benchmarks            # full run (a few minutes)
    PYTHONPATH=. python -m benchmarks --quick    # smoke run
    PYTHONPATH=. python -m benchmarks --only node,exposition --out /tmp/PERF.md

Every ``benchmarks/bench_*.py`` module is discovered by the runner
(``benchmarks/__main__.py``); the interface a module implements is described in
``benchmarks/README.md``. The anchor packages (opentelemetry-sdk,
prometheus_client, langfuse) are imported only here, inside the benchmark
functions: they are the ``bench`` extra, never runtime dependencies.
"""
