"""The README's Python examples run as written, and print what the README says they print."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
#: Each example, and the output shown after it (the indented block after a paragraph that
#: starts with "prints" or "It prints"), when the README shows one. The examples run on one
#: torch thread (conftest.py), as the README says of the one whose numbers depend on it.
EXAMPLES = re.findall(
    r"```python\n(.*?)```\n(?:\n(?:It prints|prints)[^\n]*(?:\n[^\s][^\n]*)*\n\n((?:    [^\n]*\n|\n(?=    ))+))?",
    README.read_text(),
    flags=re.DOTALL,
)


def test_readme_has_examples_and_shows_what_some_print():
    assert len(EXAMPLES) >= 2
    assert sum(bool(shown) for _, shown in EXAMPLES) >= 3


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs_and_prints_what_the_readme_shows(index, capsys, tmp_path, monkeypatch):
    code, shown = EXAMPLES[index]
    monkeypatch.chdir(tmp_path)  # examples may write files
    exec(compile(code, f"README.md example {index}", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.strip()
    if shown:
        expected = "\n".join(line[4:] for line in shown.rstrip("\n").splitlines())
        assert printed.rstrip("\n") == expected
