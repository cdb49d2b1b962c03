"""A full disk, stood in for by a file size limit on a child process (``RLIMIT_FSIZE``):
a write past it fails with EFBIG, which SQLite reports as a write the disk refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# A migration of about 400 kB of rows: more than a limit of 200 kB lets the build write.
BULK_MIGRATION = (
    "CREATE TABLE bulk (data BLOB);\n"
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)\n"
    "INSERT INTO bulk SELECT randomblob(4000) FROM n;\n"
)


def run_with_file_size_limit(
    limit: int, code: str, *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child Python that imports from the project and may not grow a
    file past ``limit`` bytes; its output, whatever its exit code. The child writes no
    bytecode (``-B``): a ``.pyc`` cut at the limit would break every later import of its
    module, in this environment's packages."""
    prologue = (
        "import resource, sys\n"
        f"sys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
    )
    return subprocess.run(
        [sys.executable, "-B", "-c", prologue + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
