"""Remove the files an answer switches off, after cookiecutter rendered the project.

Answers are read from a JSON document, never pasted into Python source. To prune files
for another answer, add one line to PRUNE.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ANSWERS: dict[str, object] = json.loads(r"""{{ cookiecutter | tojson }}""")

# (question, answer) -> paths, relative to the project, removed when that answer is given.
PRUNE: dict[tuple[str, str], tuple[str, ...]] = {
    ("ci", "none"): (".github",),
}


def main() -> None:
    project = Path.cwd()  # cookiecutter runs this hook in the generated project
    for (question, answer), paths in PRUNE.items():
        if str(ANSWERS.get(question, "")) != answer:
            continue
        for relative in paths:
            path = project / relative
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
