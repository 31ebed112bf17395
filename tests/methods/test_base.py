"""Every method module registers itself when the package is imported (nothing depends on test imports)."""

import pkgutil
import subprocess
import sys

import selfdistill.methods as methods_pkg
from selfdistill.methods import describe_method, list_methods

HELPERS = {"base", "teacher"}


def test_importing_the_package_registers_every_method_module():
    modules = sorted(m.name for m in pkgutil.iter_modules(methods_pkg.__path__) if m.name not in HELPERS)
    code = ("import sys, selfdistill.methods; "
            f"print([m for m in {modules!r} if 'selfdistill.methods.' + m not in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"not imported by selfdistill.methods: {out}"


def test_every_method_has_a_summary_line_and_paired_presets():
    """A method that reproduces an official code's quirks (an ``official`` preset) also offers the library's clean
    form (``clean``); methods without such quirks (baselines, library designs) need neither."""
    for name in list_methods():
        d = describe_method(name)
        assert d["doc"], name
        if "official" in d["presets"]:
            assert "clean" in d["presets"], (name, d["presets"])
