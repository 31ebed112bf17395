"""The tests mirror the package: a module's tests are found by its path (``src/selfdistill/methods/dkd.py`` ↔
``tests/methods/test_dkd.py``), and the tests of a method with an ``official`` preset name the upstream code, at a
commit, that their values were checked against."""

import ast
import importlib
import inspect
import re
from pathlib import Path

from selfdistill.methods import Method
from tests.helpers import REPO

PACKAGE = REPO / "src" / "selfdistill"
TESTS = REPO / "tests"
UPSTREAM = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+/tree/[0-9a-f]{40}")
NO_UPSTREAM = {"ban": "the specification names no upstream code for born-again networks"}
"""Methods with an ``official`` preset whose tests name no upstream code, and why."""


def method_modules() -> list[str]:
    """The modules of ``selfdistill.methods`` (the package's ``__init__`` aside)."""
    return sorted(p.stem for p in (PACKAGE / "methods").glob("*.py") if p.stem != "__init__")


def official_constant(path: Path) -> str | None:
    """The string a test module assigns to ``OFFICIAL`` at its top level, if any."""
    for node in ast.parse(path.read_text()).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "OFFICIAL" for t in node.targets)
                and isinstance(node.value, ast.Constant)):
            return node.value.value
    return None


def has_official_preset(module: str) -> bool:
    """Whether a method class defined in ``selfdistill.methods.<module>`` has an ``official`` preset."""
    mod = importlib.import_module(f"selfdistill.methods.{module}")
    return any(issubclass(cls, Method) and cls.__module__ == mod.__name__ and "official" in cls.PRESETS
               for _, cls in inspect.getmembers(mod, inspect.isclass))


def test_every_method_module_has_its_test_module():
    missing = [f"tests/methods/test_{m}.py" for m in method_modules()
               if not (TESTS / "methods" / f"test_{m}.py").is_file()]
    assert not missing, f"method modules without their test module: {missing}"


def test_test_folders_mirror_packages():
    folders = [p.relative_to(TESTS) for p in TESTS.rglob("*")
               if p.is_dir() and p.name != "__pycache__" and not p.name.startswith(".")]
    stray = sorted(str(f) for f in folders if not (PACKAGE / f / "__init__.py").is_file())
    assert not stray, f"test folders without a package src/selfdistill/<folder>: {stray}"


def test_tests_of_official_presets_name_the_upstream_code_at_a_commit():
    official = [m for m in method_modules() if has_official_preset(m)]
    assert official and set(NO_UPSTREAM) <= set(official)
    unnamed = [m for m in official if m not in NO_UPSTREAM
               and not UPSTREAM.fullmatch(official_constant(TESTS / "methods" / f"test_{m}.py") or "")]
    assert not unnamed, f"test modules without OFFICIAL = 'https://github.com/<owner>/<repo>/tree/<commit>': {unnamed}"
    malformed = [p.name for p in (TESTS / "methods").glob("test_*.py")
                 if official_constant(p) is not None and not UPSTREAM.fullmatch(official_constant(p))]
    assert not malformed, f"OFFICIAL is not a GitHub tree URL at a full commit in {malformed}"
