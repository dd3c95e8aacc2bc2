"""A C prototype of the calling thread's hot path, built at benchmark time.

**Not product code.** ``fastpath.c`` beside this file implements one node's
span start and end and the two metric calls in C, producing the same records
as the product and appending them to the running collectors' queues (see its
header comment for what it leaves out). The ``node`` benchmark measures it as
a *prototype* row, to put a number on the compiled hot path that its analysis
recommends.

:func:`build` compiles it with the machine's C compiler into a temporary
folder and imports it. Without a compiler, or if compiling fails, it returns
``None`` and the benchmark reports the row as not built; nothing else depends
on it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

__all__ = ("build",)

_SOURCE = Path(__file__).with_name("fastpath.c")


def build() -> ModuleType | None:
    """Compile and import ``fastpath``; ``None`` if no C compiler can build it here."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    include = sysconfig.get_paths().get("include")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    if compiler is None or include is None or not suffix:
        return None
    folder = Path(tempfile.mkdtemp(prefix="bench-cproto-"))
    target = folder / f"fastpath{suffix}"
    try:
        done = subprocess.run(
            [compiler, "-O2", "-shared", "-fPIC", f"-I{include}", str(_SOURCE), "-o",
             str(target)],
            capture_output=True, text=True, timeout=120, check=False,
        )
        if done.returncode != 0:
            return None
        spec = importlib.util.spec_from_file_location("fastpath", target)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except (OSError, ImportError, subprocess.TimeoutExpired):
        return None
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the loaded module stays mapped
