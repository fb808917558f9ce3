"""The README's robustness table is checked against the bad-input suite: every row names the tests that show it
(`tests/<file>.py::<test>`), and every named test exists."""
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def robustness_rows() -> list[list[str]]:
    "The rows of the table under '## Robustness: bad input', as lists of cells (the header first)."
    text = (ROOT / 'README.md').read_text()
    section = text.split('## Robustness: bad input', 1)[1].split('\n## ', 1)[0]
    lines = [l for l in section.splitlines() if l.startswith('|') and not set(l) <= set('|-: ')]
    return [[c.strip() for c in re.split(r'(?<!\\)\|', l.strip('|'))] for l in lines]       # '\|' is a pipe in a cell


def named_tests(cell: str) -> list[tuple[str, str]]:
    return re.findall(r'`(tests/[\w/]+\.py)::(\w+)`', cell)


def test_every_robustness_row_names_existing_tests():
    header, *rows = robustness_rows()
    assert header[-1] == 'tests' and len(rows) >= 10, header
    for row in rows:
        tests = named_tests(row[-1])
        assert tests, f"the README row {row[0]!r} names no test"
        for path, name in tests:
            source = (ROOT / path).read_text()
            assert re.search(rf'^def {name}\(', source, re.M), f"README row {row[0]!r}: {path}::{name} does not exist"


def test_the_check_fails_on_a_row_without_tests(monkeypatch):
    "The check above can fail: a row whose tests cell names nothing, or a test that does not exist, is caught."
    assert named_tests('`tests/test_bad_inputs.py::test_x`, `tests/test_faults.py::test_y`') == \
        [('tests/test_bad_inputs.py', 'test_x'), ('tests/test_faults.py', 'test_y')]
    assert named_tests('see the bad-input suite') == []
