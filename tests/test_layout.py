"""The package's layout keeps its promises: the library imports neither its application nor
``models/``, and every reference to DESIGN.md's rules names a rule that is there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = [path for path in (ROOT / "prunable_nn").rglob("*.py") if "app" not in path.relative_to(ROOT / "prunable_nn").parts]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (``from .x import`` inside prunable_nn resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            if not node.level:
                prefix = node.module or ""
            else:
                prefix = f"{base}.{node.module}" if node.module else base
            names |= {prefix} | {f"{prefix}.{alias.name}" for alias in node.names}
    return names


def test_the_library_imports_neither_its_application_nor_the_models():
    assert len(LIBRARY) > 20
    for path in LIBRARY:
        imports = imported_modules(path)
        wrong = {name for name in imports if name.startswith("prunable_nn.app") or name.split(".")[0] in {"models", "matplotlib"}}
        if path.name == "__main__.py":  # ``python -m prunable_nn demo`` starts the application
            wrong.discard("prunable_nn.app.cli")
            wrong.discard("prunable_nn.app.cli.main")
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_the_import_check_sees_relative_imports():
    demo = ROOT / "prunable_nn" / "app" / "demo.py"
    assert {"prunable_nn.loop", "prunable_nn.app.data", "models"} <= imported_modules(demo)


def test_every_reference_to_a_design_rule_names_one_that_is_there():
    rules = set(re.findall(r"^(\d+)\. \*\*", (ROOT / "DESIGN.md").read_text(), flags=re.MULTILINE))
    assert {"1", "5"} <= rules
    sources = [*ROOT.glob("prunable_nn/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py"), ROOT / "README.md"]
    cited = {
        (path.name, number)
        for path in sources
        for number in re.findall(r"DESIGN\.md,? rule (\d+)", path.read_text())
    }
    assert cited, "nothing cites DESIGN.md"
    assert all(number in rules for _, number in cited), sorted(cited)
