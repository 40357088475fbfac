"""The packages' layout as a rule: rooms are layers, imports go one way, functions stay short.

Two packages: the runtime ``latentshift`` (the wheel) and the research code beside it
(``research/latentshift_research``), which imports the runtime; the runtime never imports it.

Read from the source with ``ast`` (nothing is imported), so a new module is checked the day
it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Package -> its folder.
PACKAGES = {"latentshift": REPO / "latentshift", "latentshift_research": REPO / "research" / "latentshift_research"}
#: Rooms of each package from the bottom up; a room may import only rooms of a lower rank (and itself).
RANKS = {
    "latentshift": {
        "errors": 0, "settings": 0, "runtime": 1, "options": 1, "models": 2, "core": 3, "weights": 3, "io": 4, "explanation": 5,
        "pipeline": 6, "compare": 7, "batch": 7, "results": 7, "app": 9, "study": 9, "cli": 10, "__main__": 11,
    },
    "latentshift_research": {"training": 0, "evaluation": 1, "tools": 1, "cli": 2, "__main__": 3},
}
#: The longest function body allowed: the runtime's, and the research code's (training loops not yet split).
MAX_FUNCTION_LINES = {"latentshift": 50, "latentshift_research": 50}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of both packages."""
    found = {}
    for folder in PACKAGES.values():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imported_modules(name: str, path: Path, *, top_level_only: bool = False) -> set[str]:
    """Package modules that ``name`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    known = set(modules())
    result = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{alias.name}" for alias in node.names]
            # ``from . import demo`` imports the submodule; its package is only the parent
            candidates = [m for m in submodules if m in known] or [target]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        result.update(c for c in candidates if c.split(".")[0] in PACKAGES)
    return {c for c in result if c in known and c != name}


def package(module: str) -> str:
    return module.split(".")[0]


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_room_has_a_rank():
    for name in modules():
        assert room(name) == "__init__" or room(name) in RANKS[package(name)], f"{name}: its room has no rank"


def test_the_runtime_never_imports_the_research_package():
    offences = [f"{name} imports {target}" for name, path in modules().items() if package(name) == "latentshift"
                for target in imported_modules(name, path) if package(target) != "latentshift"]
    named = [f"{path.relative_to(REPO)}:{node.lineno}" for name, path in modules().items() if package(name) == "latentshift"
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and str(node.value).startswith("latentshift_research")]
    assert not offences and not named, "\n".join(offences + [f"{p} names a research module" for p in named])


def test_imports_go_one_way():
    offences = []
    for name, path in modules().items():
        if room(name) == "__init__":
            continue  # the package's front door re-exports (lazily for the pipeline)
        ranks = RANKS[package(name)]
        for target in imported_modules(name, path):
            if package(target) != package(name):
                continue  # research -> runtime is the one way allowed (the other way: the test above)
            if room(target) == "__init__":
                offences.append(f"{name} imports the package front door {target}")
            elif room(target) != room(name) and ranks[room(target)] >= ranks[room(name)]:
                offences.append(f"{name} ({room(name)}) imports {target} ({room(target)})")
    assert not offences, "\n".join(offences)


def test_no_import_cycle():
    graph = {name: imported_modules(name, path, top_level_only=True) for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = trail[trail.index(target):] + [target] if target in trail else [node, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def _body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]  # the docstring does not count
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1


def test_no_function_over_the_limit():
    long = []
    for name, path in [*modules().items(), ("latentshift", REPO / "app.py")]:
        limit = MAX_FUNCTION_LINES[name.split(".")[0]]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > limit:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {_body_lines(node)} lines")
    assert not long, "\n".join(long)


def test_every_module_says_what_its_room_holds():
    missing = [str(path.relative_to(REPO)) for path in modules().values()
               if path.name != "__main__.py" and not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert not missing, f"modules without a docstring: {missing}"


def readme_tree() -> set[str]:
    """Paths named by the tree of README's layout section (indentation = folder depth)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    tree = readme.split("## Layout", 1)[1].split("```", 2)[1]
    paths, folders = set(), []
    for line in tree.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        folders = folders[:depth]
        paths.add("/".join(folders + [name.rstrip("/")]))
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
    return paths


def test_readme_layout_lists_every_module_and_nothing_gone():
    listed = readme_tree()
    actual = {path.relative_to(REPO).as_posix() for path in modules().values()
              if path.name not in ("__init__.py", "__main__.py")}
    assert not actual - listed, f"README's layout section does not list: {sorted(actual - listed)}"
    gone = [p for p in listed if not (REPO / p).exists()]
    assert not gone, f"README's layout section lists what does not exist: {gone}"


def test_space_entry_is_a_few_lines():
    lines = [line for line in (REPO / "app.py").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 20, "app.py should only start latentshift.app"


#: The entry points: the only modules that may read the LATENTSHIFT_* variables from the environment
#: (``latentshift.settings`` parses them; the others call it, or, for the allocator, run before it).
ENVIRONMENT_READERS = ("latentshift.settings", "latentshift.runtime", "latentshift.app.serving", "latentshift.cli")
#: Modules that read other programs' variables by a computed name: huggingface_hub's HF_* rules.
COMPUTED_KEYS = ("latentshift.weights.hub",)


def _os_attribute(node: ast.AST, name: str) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.value, ast.Name)
            and node.value.id == "os")


def environment_keys(tree: ast.Module) -> list[tuple[int, ast.expr | None]]:
    """(line, key) of every use of ``os.environ`` / ``os.getenv``; key None when the mapping is used whole."""
    keys, handled = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _os_attribute(node.value, "environ"):
            handled.add(id(node.value))
            keys.append((node.lineno, node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _os_attribute(
                node.func.value, "environ"):
            handled.add(id(node.func.value))
            keys.append((node.lineno, node.args[0] if node.args else None))
        elif isinstance(node, ast.Call) and _os_attribute(node.func, "getenv"):
            keys.append((node.lineno, node.args[0] if node.args else None))
    keys += [(node.lineno, None) for node in ast.walk(tree) if _os_attribute(node, "environ") and id(node) not in handled]
    return keys


def named_strings(tree: ast.Module) -> dict[str, str]:
    """Module names that hold a variable's name: ``X = "..."``, ``X = variable_name(...)`` and imported
    ``*_ENV`` constants (the last two stand for a LATENTSHIFT_ variable)."""
    names = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                names[node.targets[0].id] = value.value
            elif isinstance(value, ast.Call) and getattr(value.func, "id", "") == "variable_name":
                names[node.targets[0].id] = "LATENTSHIFT_"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update({alias.asname or alias.name: "LATENTSHIFT_" for alias in node.names
                          if alias.name.endswith("_ENV")})
    return names


def latentshift_environment_reads(name: str, source: str) -> list[str]:
    """Where module ``name`` reads a LATENTSHIFT_ variable from the environment (or a variable whose
    name it computes, which could be one), or imports ``environ``/``getenv`` from os by name."""
    tree = ast.parse(source)
    strings = named_strings(tree)
    found = [f"{name}:{node.lineno} imports {alias.name} from os" for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module == "os"
             for alias in node.names if alias.name in ("environ", "getenv")]
    for line, key in environment_keys(tree):
        text = key.value if isinstance(key, ast.Constant) else strings.get(getattr(key, "id", None))
        if not isinstance(text, str) and name not in COMPUTED_KEYS:
            found.append(f"{name}:{line} reads the environment by a computed name")
        elif isinstance(text, str) and text.startswith("LATENTSHIFT_"):
            found.append(f"{name}:{line} reads {text}…")
    return found


def test_only_the_entry_points_read_latentshift_variables():
    below = {name: path for name, path in modules().items() if package(name) == "latentshift"
             and not any(name == reader or name.startswith(reader + ".") for reader in ENVIRONMENT_READERS)}
    offences = [line for name, path in below.items()
                for line in latentshift_environment_reads(name, path.read_text(encoding="utf-8"))]
    assert not offences, ("read the settings at an entry point and pass them down (latentshift/settings.py):\n"
                          + "\n".join(offences))


@pytest.mark.parametrize("source", [
    'import os\nX = os.environ.get("LATENTSHIFT_MAX_MODELS", "")',
    'import os\nNAME = "LATENTSHIFT_MANIFEST"\nX = os.environ[NAME]',
    'import os\nfrom .manifest import EXTRA_MANIFEST_ENV\nX = os.getenv(EXTRA_MANIFEST_ENV)',
    'import os\nfrom ..settings import variable_name\nENV = variable_name("channels_last")\nX = ENV in os.environ',
    'import os\ndef f(name):\n    return os.environ.get(name)',
    'from os import environ\nX = environ.get("LATENTSHIFT_MAX_MODELS")',
])
def test_the_environment_check_finds_a_read(source):
    assert latentshift_environment_reads("latentshift.weights.example", source)


def test_the_environment_check_lets_other_variables_be():
    source = 'import os\nos.environ["GRADIO_ANALYTICS_ENABLED"] = "False"\nX = os.environ.get("SPACES_ZERO_GPU", "")'
    assert latentshift_environment_reads("latentshift.app.example", source) == []
