import platform
import subprocess
import sys

import pytest

# 300 MB in blocks below glibc's mmap threshold, all freed but the last, which pins the top of the heap: freeing them
# leaves the resident size where it was, and only a trim gives the pages back
FRAGMENTED_HEAP = """
import numpy as np, psutil
from edgeship.memory import release_freed_memory
rss = lambda: psutil.Process().memory_info().rss >> 20
blocks = [np.ones(100_000, np.uint8) for _ in range(3000)]
kept = blocks[-1]
del blocks
freed = rss()
assert release_freed_memory()
print(freed, rss())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_a_trim_gives_a_fragmented_heaps_free_pages_back() -> None:
    freed, trimmed = map(int, subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True,
                                             check=True).stdout.split())
    assert freed - trimmed >= 200, (freed, trimmed)
