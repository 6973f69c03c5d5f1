"""Record the results the view tests draw: one small real run per entry of
``combinations()``, saved as ``results/<stem>.json`` (``RunResult.to_json``).
Combinations RunConfig refuses are skipped (the tests assert the refusal).

    PYTHONPATH=. python tests/data/make_results.py [stem-substring ...]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from combinations import RESULTS_DIR, combinations, config_or_refusal, path_of  # noqa: E402

import playground as pg  # noqa: E402


def main(only: list[str]) -> None:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    for stem, fields in combinations().items():
        if only and not any(o in stem for o in only):
            continue
        config = config_or_refusal(fields)
        if isinstance(config, Exception):
            print(f"{stem}: refused ({config})")
            continue
        result = pg.run(config)
        with open(path_of(stem), "w") as f:
            f.write(result.to_json())
        print(f"{stem}: {'passed' if result.passed else 'FAILED'} ({os.path.getsize(path_of(stem)) // 1024} KiB)")


if __name__ == "__main__":
    main(sys.argv[1:])
