"""One fixed number of CPU threads for a whole training run, whatever else the machine is doing.

CPU kernels split their sums across the threads of an OpenMP team, so the float rounding of every
step, and after some steps the weights, depend on how many threads took part. Two settings let
that number change with the machine's load: OpenMP's dynamic adjustment (``OMP_DYNAMIC=true``,
set by some cluster environments) makes GNU OpenMP shrink each team while the 15-minute load
average is high, and MKL's own dynamic adjustment (on by default) lets MKL use fewer threads than
asked. :func:`fix_intra_op_threads` turns both off and pins the count, so that the same seed and
config give the same weights on a loaded machine as on an idle one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# GNU (libgomp), Intel (libiomp5) and LLVM (libomp) OpenMP runtimes, also the copies that wheels
# bundle under a hashed name (libgomp-a34b3233.so.1)
_OPENMP_RUNTIME = re.compile(r"^lib(gomp|iomp5|omp)([.-].*)?\.(so|dylib)(\..*)?$")


def fix_intra_op_threads(threads: int | None = None) -> int:
    """Pin torch's intra-op threads and turn off load-dependent thread counts.

    Call it once at the start of a run, before any tensor work of the run. DataLoader workers
    (forked later) inherit the settings; Lightning's DDP launcher may still lower the count per
    process, by a rule that depends only on the machine's cores.

    Args:
        threads: intra-op threads; None keeps the number torch chose at start (the cores this
            process may use, or ``OMP_NUM_THREADS``). The weights depend on it: give the same
            number to reproduce a run on a machine with another core count.

    Returns:
        The number of threads in use from now on.

    Raises:
        ValueError: ``threads`` is not a positive integer.
        RuntimeError: an OpenMP runtime refused to turn its dynamic adjustment off.
    """
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"cpu_threads must be a positive integer or null, got {threads!r}")
    count = threads or torch.get_num_threads()
    torch.set_num_threads(count)  # also turns MKL's dynamic adjustment off
    for runtime in _loaded_openmp_runtimes():
        library = ctypes.CDLL(str(runtime))
        # per OpenMP thread: this is the thread that runs training steps and their backward
        library.omp_set_dynamic(0)
        if library.omp_get_dynamic() != 0:
            raise RuntimeError(f"{runtime} keeps OpenMP dynamic adjustment on")
    return count


def _loaded_openmp_runtimes() -> list[Path]:
    """The OpenMP runtimes mapped into this process (Linux), else those bundled with torch."""
    maps = Path("/proc/self/maps")
    if maps.is_file():
        # "address perms offset dev inode path": only file-backed mappings have a path
        paths = (line.split(maxsplit=5)[-1] for line in maps.read_text().splitlines())
        candidates = [Path(path) for path in paths if path.startswith("/")]
    else:
        log.warning(
            "no /proc/self/maps: OpenMP dynamic adjustment is turned off only in the runtimes "
            "bundled with torch; set OMP_DYNAMIC=false to be sure"
        )
        torch_libraries = Path(torch.__file__).parent / "lib"
        candidates = sorted(torch_libraries.iterdir()) if torch_libraries.is_dir() else []
    unique = dict.fromkeys(path for path in candidates if _OPENMP_RUNTIME.match(path.name))
    return [path for path in unique if os.path.isfile(path)]
