"""The package's imports point down the layers, with no circle.

Every import is read with `ast`, the ones inside functions (lazy imports) and under
`if TYPE_CHECKING:` included, since each of them is a dependency a reader of the code has to
follow. The layer order is written once, here, bottom first; a module may import modules of its
own layer or of a lower one, and no set of modules may import each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bninspect"

# Bottom first: (name, modules). A module name covers a module or a package (all its modules);
# "bninspect" alone is the facade `bninspect/__init__.py`. Each module's docstring names its layer.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # what every layer shares: version, exceptions, findings, thresholds, the model description
    ("foundation", ("bninspect._version", "bninspect.errors", "bninspect.untrusted", "bninspect.findings", "bninspect.thresholds",
                    "bninspect.quiet", "bninspect.tf_runtime", "bninspect.keras_runtime",
                    "bninspect.keras_classes", "bninspect.summary", "bninspect.model")),
    # file -> model description; input data; writing and comparing model files
    ("readers", ("bninspect.loaders", "bninspect.data", "bninspect.writing", "bninspect.diff")),
    # static rules: pure functions over the description
    ("rules", ("bninspect.rules",)),
    # settings: which rules run, at what severity, with which thresholds
    ("settings", ("bninspect.config",)),
    # result types: a model's report and the JSON document, a recalibration's result
    ("results", ("bninspect.report", "bninspect.recalibration", "bninspect.baseline")),
    # dynamic analysis (with SavedModel reading, the only callers of tf_runtime.import_tensorflow)
    ("probes", ("bninspect.probes",)),
    # the engine: read, run rules and probes with settings, decide the exit status
    ("engine", ("bninspect.checking", "bninspect.changed")),
    # plain data in, text out
    ("reporters", ("bninspect.reporters",)),
    # the Python API and its facade
    ("api", ("bninspect.api", "bninspect.monitor", "bninspect")),
    # one module per CLI command, then the CLI itself
    ("commands", ("bninspect.commands",)),
    ("cli", ("bninspect.cli", "bninspect.__main__")),
)


def module_names(package_dir: Path) -> dict[str, Path]:
    root = package_dir.name
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [root, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports, anywhere in its code."""
    modules = module_names(package_dir)
    root = package_dir.name

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            wanted: list[str] = []
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from mod import name` the module.
                wanted = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                          for alias in node.names]
            for target in wanted:
                if target == root or target.startswith(root + "."):
                    found = known(target)
                    if found is not None and found != name:
                        graph[name].add(found)
    return graph


Layers = tuple[tuple[str, tuple[str, ...]], ...]


def layer_of(module: str, layers: Layers) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching name, layer index)
    for index, (_, names) in enumerate(layers):
        for entry in names:
            root_facade = "." not in entry
            if module == entry or (not root_facade and module.startswith(entry + ".")):
                if best is None or len(entry) > best[0]:
                    best = (len(entry), index)
    return None if best is None else best[1]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_problems(package_dir: Path, layers: Layers) -> list[str]:
    graph = imports(package_dir)
    problems = [f"{name}: in no layer" for name in sorted(graph) if layer_of(name, layers) is None]
    for name in sorted(graph):
        own = layer_of(name, layers)
        for target in sorted(graph[name]):
            theirs = layer_of(target, layers)
            if own is not None and theirs is not None and theirs > own:
                problems.append(f"{name} (layer {own}) imports {target} (layer {theirs}), a higher layer")
    problems.extend(f"import circle: {' <-> '.join(circle)}" for circle in circles(graph))
    return problems


def test_bninspect_imports_point_down_the_layers_without_circles():
    assert layer_problems(PACKAGE, LAYERS) == []


def test_every_layer_name_exists():
    modules = module_names(PACKAGE)
    for _, names in LAYERS:
        for entry in names:
            assert entry in modules, entry


def test_every_module_docstring_names_its_layer():
    missing = []
    for name, path in module_names(PACKAGE).items():
        layer = LAYERS[layer_of(name, LAYERS)][0]
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if f"Layer: {layer}" not in docstring:
            missing.append(f"{name}: docstring does not say 'Layer: {layer}'")
    assert missing == []


def _package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for relative, text in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package


SYNTHETIC_LAYERS = (("low", ("pkg.low",)), ("high", ("pkg.high",)), ("top", ("pkg",)))


def test_the_check_passes_a_clean_synthetic_package(tmp_path):
    package = _package(tmp_path, {
        "__init__.py": "from pkg import high\n",
        "low.py": "X = 1\n",
        "high.py": "from pkg.low import X\n",
    })
    assert layer_problems(package, SYNTHETIC_LAYERS) == []


def test_the_check_fails_on_a_lazy_import_that_runs_up_and_closes_a_circle(tmp_path):
    package = _package(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from pkg.high import Y\n    return Y\n",
        "high.py": "from pkg.low import f\nY = 2\n",
    })
    problems = layer_problems(package, SYNTHETIC_LAYERS)
    assert "pkg.low (layer 0) imports pkg.high (layer 1), a higher layer" in problems
    assert "import circle: pkg.high <-> pkg.low" in problems


def test_the_check_fails_on_a_circle_inside_one_layer_and_on_relative_imports(tmp_path):
    package = _package(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "from . import b\n",
        "low/b.py": "from .a import thing\n",
        "high.py": "",
    })
    problems = layer_problems(package, SYNTHETIC_LAYERS)
    assert problems == ["import circle: pkg.low.a <-> pkg.low.b"]


def test_the_check_names_a_module_outside_every_layer(tmp_path):
    package = _package(tmp_path, {"__init__.py": "", "low.py": "", "high.py": "", "stray.py": ""})
    assert layer_problems(package, SYNTHETIC_LAYERS) == ["pkg.stray: in no layer"]


def test_the_real_package_fails_once_an_upward_import_is_added(tmp_path):
    """The test of the test on the real code: a copy of bninspect with one lazy import from the
    model description up into the engine (which imports the model) is caught, as an upward
    import and as a circle."""
    import shutil

    copy = tmp_path / "bninspect"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    model = copy / "model.py"
    model.write_text(model.read_text(encoding="utf-8")
                     + "\n\ndef _bad():\n    from bninspect.checking import run_static_rules\n    return run_static_rules\n",
                     encoding="utf-8")
    problems = layer_problems(copy, LAYERS)
    assert any(problem.startswith("bninspect.model (layer 0) imports bninspect.checking") for problem in problems)
    assert any(problem.startswith("import circle:") and "bninspect.model" in problem for problem in problems)
