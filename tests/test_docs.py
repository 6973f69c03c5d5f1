"""The README's key tables and command lines against the code: a key the
code writes and the README leaves out, or one the README names and the code
no longer writes, fails here."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from playground.__main__ import _add_run_flags
from playground.result.run_result import RunResult

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RESULTS = sorted((ROOT / "tests" / "data" / "results").glob("*.json"))
TICKED = re.compile(r"`([^`]+)`")


def _section(title: str) -> str:
    """The README's text under the heading ``title``, up to the next heading."""
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ )", README, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def _table(title: str) -> dict[str, str]:
    """The first table of a section: {first cell: second cell}, the header
    and the rule left out."""
    rows = [line for line in _section(title).splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows[2:]]
    return {c[0]: c[1] for c in cells}


def _names(cell: str) -> set[str]:
    """The names a cell puts in backticks, a list's "[]" dropped."""
    return {name.removesuffix("[]") for name in TICKED.findall(cell)}


@pytest.fixture(scope="module")
def result() -> RunResult:
    """A recorded zero-bubble pipeline run: every rank key, events with stage and micro_batch."""
    return RunResult.from_json((ROOT / "tests" / "data" / "results" / "transformer-pipeline-zbvzerobubble.json")
                               .read_text())


def test_the_result_json_table_names_every_top_level_key(result):
    table = _table("Result JSON")
    documented = {name for key in table for name in _names(key)}
    assert documented == set(result.to_dict())


def test_the_ranks_row_names_every_key_of_a_rank_report(result):
    row = _table("Result JSON")["`ranks[]`"]
    rank = result.ranks[0].to_dict()
    assert set(rank) <= _names(row), set(rank) - _names(row)
    assert set(rank["time"]) <= _names(row) and set(rank["memory"]) <= _names(row)
    # A name the row gives is a key the report writes (or an event's, or diverged's), or null.
    event_keys = {k for r in result.ranks for e in r.timeline for k in e}
    named = {n for n in _names(row) if re.fullmatch(r"[a-z_]+", n)}
    assert named <= set(rank) | set(rank["time"]) | set(rank["memory"]) \
        | event_keys | {"step", "ranks", "null"}


def test_the_predictions_and_baseline_rows_name_their_keys(result):
    table = _table("Result JSON")
    assert set(result.predictions[0]) <= _names(table["`predictions`"])
    assert set(result.baseline) <= _names(table["`baseline`"])


def test_every_recorded_result_has_the_documented_keys():
    documented = {name for key in _table("Result JSON") for name in _names(key)}
    for path in RESULTS:
        assert set(RunResult.from_json(path.read_text()).to_dict()) == documented, path.name


def test_the_command_lines_parse_with_the_cli_flags():
    parser = argparse.ArgumentParser()
    _add_run_flags(parser)
    block = re.search(r"```bash\n(.*?)```", _section("Command line"), re.S).group(1)
    runs = [line for line in block.replace("\\\n", " ").splitlines() if line.startswith("python -m playground run")]
    assert runs
    for line in runs:
        _, unknown = parser.parse_known_args(shlex.split(line)[4:])
        assert unknown == [], (line, unknown)
