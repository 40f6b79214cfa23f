"""Meta-tests: layout, packaging, dependency rules, and that every hook is tested and documented."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
import tomllib
from pathlib import Path

import celeriac
import pytest
from celeriac import hookspecs

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
PLUGINS = ROOT / "plugins"
TESTS = ROOT / "tests"


def hook_names() -> list[str]:
    return [name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "celeriac_spec")]


def package_of(folder: Path) -> str:
    if folder.is_relative_to(CORE):
        parts = folder.relative_to(CORE).parts
        return ".".join(("celeriac", *parts))
    return ".".join(("celeriac", "plugins", *folder.relative_to(PLUGINS).parts))


def imports_of(path: Path, package: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")  # the package containing ``path``: level 1 is itself
                base = parts[: len(parts) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            names = [f"{module}.{alias.name}" for alias in node.names] if node.module is None or node.level else []
            found += [(module, node.lineno, id(node) in top_level)]
            found += [(name, node.lineno, id(node) in top_level) for name in names]
    return found


def test_package_list_matches_folders_on_disk() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = {package_of(init.parent) for root in (CORE, PLUGINS) for init in root.rglob("__init__.py")}
    on_disk.add("celeriac.plugins")
    assert listed == on_disk


def test_every_builtin_plugin_has_an_entry_point() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry_points = config["project"]["entry-points"]["celeriac"]
    folders = {p.name for p in PLUGINS.iterdir() if (p / "__init__.py").exists()}
    assert {value.rsplit(".", 1)[-1] for value in entry_points.values()} == folders


def test_core_never_imports_a_plugin() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in CORE.rglob("*.py")
        for module, line, _ in imports_of(path, package_of(path.parent))
        if module.startswith("celeriac.plugins")
    ]
    assert offenders == []


#: Kernel sub-packages with a public API of their own (their ``__all__``), besides ``celeriac`` itself.
PUBLIC_PACKAGES = ("celeriac.events", "celeriac.control", "celeriac.beat", "celeriac.cli")


@pytest.mark.parametrize("plugin", sorted(p.name for p in PLUGINS.iterdir() if (p / "__init__.py").exists()))
def test_plugins_use_only_the_public_api_and_import_third_party_lazily(plugin: str) -> None:
    own = f"celeriac.plugins.{plugin}"
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    offenders = []
    for path in (PLUGINS / plugin).rglob("*.py"):
        for module, line, top_level in imports_of(path, package_of(path.parent)):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module.startswith("celeriac.plugins.") and not (module == own or module.startswith(own + ".")):
                offenders.append(f"{where} imports another plugin: {module}")
            elif (
                module.startswith("celeriac.")
                and not module.startswith(("celeriac.plugins", "celeriac.testing", *PUBLIC_PACKAGES))
                and module.split(".")[1] not in celeriac.__all__
            ):
                offenders.append(f"{where} imports kernel internals: {module}")
            root = module.split(".")[0]
            if path.name == "__init__.py" and top_level and root not in stdlib and root != "celeriac":
                offenders.append(f"{where} imports {root} at module level; import it inside the hook")
    assert offenders == []


def test_nothing_imports_the_source_folders_by_name() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for root in (CORE, PLUGINS, TESTS)
        for path in root.rglob("*.py")
        for module, line, _ in imports_of(path, "x.y")
        if module.split(".")[0] in {"core", "plugins"}
    ]
    assert offenders == []


def test_py_typed_is_shipped() -> None:
    assert (CORE / "py.typed").exists()
    spec = importlib.util.find_spec("celeriac")
    assert spec is not None


def test_every_hook_is_documented_with_its_signature() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_hook_docs
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert (ROOT / "docs" / "hooks.md").read_text() == gen_hook_docs.render(), (
        "docs/hooks.md is stale: run python scripts/gen_hook_docs.py"
    )
    for name in hook_names():
        signature = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"## `{name}({signature})`" in gen_hook_docs.render()


def test_every_hook_has_a_test() -> None:
    corpus = "\n".join(path.read_text() for path in TESTS.rglob("*.py") if path.name != Path(__file__).name)
    untested = [name for name in hook_names() if name not in corpus]
    assert untested == []


def test_every_signal_is_a_hook_and_has_a_facade_method() -> None:
    from celeriac._plugins import SIGNALS, PluginHost

    specs = set(hook_names())
    assert set(SIGNALS) <= specs
    assert all(callable(getattr(PluginHost, signal, None)) for signal in SIGNALS)
    assert {name for name in specs if not name.startswith("celeriac_")} == set(SIGNALS)
