"""Remove the files an answer switches off, after cookiecutter rendered the project.

Answers are read from a JSON document, never pasted into Python source. To prune files
for another answer, add one line to PRUNE; to keep nothing but a few paths, to KEEP_ONLY.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ANSWERS: dict[str, object] = json.loads(r"""{{ cookiecutter | tojson }}""")

# (question, answer) -> paths, relative to the project, removed when that answer is given.
PRUNE: dict[tuple[str, str], tuple[str, ...]] = {
    ("ci", "none"): (".github",),
    ("layout", "full"): ("snippets",),
    ("example_app", "no"): ("app", "tests/integration/api", "tests/unit/api"),
    ("turso", "no"): ("tests/unit/test_libsql_engine.py",),
}

# (question, answer) -> the only paths kept when that answer is given; all others go.
KEEP_ONLY: dict[tuple[str, str], tuple[str, ...]] = {
    ("layout", "isolation-only"): (
        ".cookiecutter.json",
        "ADOPTING.md",
        "lib",
        "snippets",
        "tests/isolation_reporter.py",
        "tests/isolation_settings.py",
        "tests/performance-baseline.json",
        "tests/setup_integration.py",
    ),
}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _keep_only(directory: Path, kept: tuple[str, ...], prefix: str = "") -> None:
    """Remove everything under ``directory`` but the ``kept`` paths and their parents."""
    for path in sorted(directory.iterdir()):
        relative = f"{prefix}{path.name}"
        if relative in kept:
            continue
        if path.is_dir() and any(keep.startswith(f"{relative}/") for keep in kept):
            _keep_only(path, kept, f"{relative}/")
        else:
            _remove(path)


def _forget_removed_tests(project: Path) -> None:
    """Keep in ``.test_durations`` (pytest-split's timings) only tests that were generated."""
    path = project / ".test_durations"
    if not path.is_file():
        return
    durations = json.loads(path.read_text())
    kept = {
        test: time for test, time in durations.items() if (project / test.split("::")[0]).is_file()
    }
    path.write_text(json.dumps(kept, indent=4, sort_keys=True) + "\n")


def main() -> None:
    project = Path.cwd()  # cookiecutter runs this hook in the generated project
    for (question, answer), paths in PRUNE.items():
        if str(ANSWERS.get(question, "")) != answer:
            continue
        for relative in paths:
            _remove(project / relative)
    for (question, answer), kept in KEEP_ONLY.items():
        if str(ANSWERS.get(question, "")) == answer:
            _keep_only(project, kept)
    _forget_removed_tests(project)


def remove_this_copy() -> None:
    """cookiecutter runs this hook from a copy rendered with every answer (the author's
    email too) under a name of its own, in the temporary directory, and leaves it there:
    remove it, once read. The template's own file keeps its name and is never removed."""
    script = Path(__file__)
    if script.name != "post_gen_project.py":
        script.unlink(missing_ok=True)


if __name__ == "__main__":
    remove_this_copy()
    main()
