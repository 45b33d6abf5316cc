"""The layout's import rules (docs/architecture.md), checked on every .py file.

Each file's imports are read with `ast`, at the top and inside functions alike (an import
moved into a function is still a dependency). The parts, from the bottom up: symposium
(settings), tenants (models, policy, audit), capabilities (what blocks are lent),
isolates (the sandboxed runtime and its broker), blocks (saved blocks and what runs them:
the API, HTTP endpoints, schedules), console (the pages). A part may import
the parts below it, never those above; tests/ and bench/ may import anything.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("symposium", "tenants", "capabilities", "isolates", "blocks", "console")
# What each product part must not import, and why.
FORBIDDEN = {
    "symposium": {"console": "the pages are routed only by symposium/urls.py, routing.py and asgi.py"},
    "tenants": {
        "console": "nothing imports the pages",
        "capabilities": "tenants/ is below the capabilities, which build on its models and policy",
        "isolates": "tenants/ is below the isolates, which run blocks under its policy",
        "blocks": "saved blocks build on the tenants (a run names its block by a model reference, not an import)",
    },
    "capabilities": {
        "console": "nothing imports the pages",
        "isolates": "the capabilities are called by the broker, never the other way round",
        "blocks": "saved blocks are run by the isolates, which call the capabilities",
    },
    "isolates": {
        "console": "nothing imports the pages",
        "blocks": "the isolates run code; which saved block it is, blocks/ decides",
    },
    "blocks": {"console": "nothing imports the pages"},
}
# The modules that put the pages on the site.
ROUTES = {"symposium/urls.py", "symposium/routing.py", "symposium/asgi.py"}
# Names that only tests use.
TEST_ONLY_NAMES = ("testing.py", "conftest.py", "fixtures.py")


def python_files():
    skip = {".git", ".venv", "node_modules", "var", "__pycache__"}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if not skip.intersection(relative.parts):
            yield relative


def imported_modules(relative):
    """(line, dotted name) of every import in the file, relative ones resolved."""
    tree = ast.parse((ROOT / relative).read_text(), filename=str(relative))
    package = list(relative.parent.parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield node.lineno, module
            # `from capabilities import files` imports capabilities.files.
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def part_of(relative):
    return relative.parts[0] if len(relative.parts) > 1 and relative.parts[0] in PRODUCT else None


def violations():
    found = []
    for relative in python_files():
        part = part_of(relative)
        if part is None:
            continue
        for line, module in imported_modules(relative):
            target = module.split(".")[0]
            reason = FORBIDDEN.get(part, {}).get(target)
            if reason and not (target == "console" and relative.as_posix() in ROUTES):
                found.append(f"{relative}:{line} imports {module}: {reason}")
    return sorted(set(found))


def test_parts_import_only_the_parts_below_them():
    problems = violations()
    assert not problems, "Imports against the layout (docs/architecture.md):\n" + "\n".join(problems)


def test_product_packages_hold_no_test_harness():
    harnesses = [
        str(relative) for relative in python_files()
        if part_of(relative) and (relative.name in TEST_ONLY_NAMES or relative.name.startswith("test_"))
    ]
    assert not harnesses, "Modules for tests belong under tests/support/, not in the product: " + ", ".join(harnesses)


def test_no_product_module_is_imported_only_by_tests():
    """A product module that tests or benchmarks import must be used by the product too:
    imported by it, loaded by Django itself (apps, admin, models, migrations, commands,
    settings), or started by file name (as isolates/pool.py starts isolates/sandbox.py)."""
    loaded_by_django = {"apps.py", "admin.py", "models.py", "settings.py", "asgi.py", "urls.py", "routing.py", "__init__.py"}
    used_by_product, used_by_tests, named_by_product = set(), {}, set()
    for relative in python_files():
        for _, module in imported_modules(relative):
            if part_of(relative):
                used_by_product.add(module)
            else:
                used_by_tests.setdefault(module, str(relative))
        if part_of(relative):
            tree = ast.parse((ROOT / relative).read_text())
            named_by_product.update(node.value for node in ast.walk(tree)
                                    if isinstance(node, ast.Constant) and isinstance(node.value, str))
    unused = []
    for relative in python_files():
        if not part_of(relative) or relative.name in loaded_by_django:
            continue
        if {"migrations", "management"}.intersection(relative.parts):
            continue
        module = ".".join(relative.with_suffix("").parts)
        if module in used_by_tests and module not in used_by_product and relative.name not in named_by_product:
            unused.append(f"{relative} (imported by {used_by_tests[module]})")
    assert not unused, "Product modules only tests use; move them under tests/support/: " + ", ".join(unused)


@pytest.mark.parametrize("source, expected", [
    ("from isolates.broker import run_group\n", "tenants/example.py:1 imports isolates.broker"),
    ("def later():\n    from capabilities.database import postgres\n", "tenants/example.py:2 imports capabilities.database"),
    ("from console import views\n", "tenants/example.py:1 imports console"),
])
def test_cant_hide_an_import_against_the_layout(tmp_path, monkeypatch, source, expected):
    """The check sees imports inside functions too, and names the file, line and module."""
    (tmp_path / "tenants").mkdir()
    (tmp_path / "tenants" / "example.py").write_text(source)
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert any(problem.startswith(expected) for problem in violations())
