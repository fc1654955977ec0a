"""The house's layering, read from the code with ``ast`` (no imports, no network): lower floors never import
higher ones, there is no import circle between files or between packages, one function opens a predictor, and
only ``runs/`` spells the file names of a run directory."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "histoclass"

#: Layers that know nothing above them: they import only from these packages and modules of ours.
BASE = {"errors", "console", "atomic", "registry", "machine", "heap"}
LOW_LAYERS = {
    "config": BASE | {"config"},
    "data": BASE | {"config", "data"},
    "runs": BASE | {"config", "data", "runs"},
}
#: Third-party packages a layer must not reach, directly or through our own modules.
FORBIDDEN_THIRD_PARTY = {
    "runs": {"torch", "timm", "lightning", "torchvision"},
    "inference": {"lightning"},
}
#: Our packages a layer must not reach, directly or through our own modules.
FORBIDDEN_OURS = {"inference": {"training"}, "evaluation": {"training"}, "export": {"training"}}
#: The house from the ground up: a package (or top-level module) imports only from its own floor or below.
FLOORS = [
    BASE,
    {"config"},
    {"data"},
    {"runs"},
    {"calibration", "models"},
    {"inference"},
    {"conversion", "embeddings", "shift"},
    {"audit", "deploy"},
    {"prediction", "export", "serving", "slides"},
    {"evaluation"},
    {"training"},
    {"adaptation", "benchmark", "tuning"},
    {"verbs", "cli", "__main__", ""},
]
#: Where a predictor may be constructed: the inference layer's own loader and the one opener above it.
PREDICTOR_MAKERS = {"histoclass.inference.predictor", "histoclass.deploy.engines"}
RUN_FILE_NAMES = [
    "config.yaml",
    "model.json",
    "model.safetensors",
    "history.csv",
    "split.csv",
    "metrics.json",
    "labels.txt",
    "skipped_files.txt",
    "preprocess.json",
    "parity.json",
    "best.ckpt",
    "last.ckpt",
    "checkpoints/",
    "calibration_history.json",
    "tiles.csv",
    "summary.json",
]
#: The same names meaning something else: the Hugging Face hub's file names, looked up in its cache.
ALLOWED_NAMES = {"histoclass.models.hub": {"model.safetensors"}}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_package(root: Path = PACKAGE) -> dict[str, str]:
    """Every module of the package: dotted name -> source."""
    return {module_name(p, root): p.read_text() for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, source: str, modules: set[str]) -> tuple[set[str], set[str]]:
    """(our modules, third-party top-level packages) that ``name`` imports anywhere, lazy imports included."""
    ours, others = set(), set()
    package = (
        name
        if f"{name}.__init__" in modules or any(m.startswith(name + ".") for m in modules)
        else ""
    )
    package = package or name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        for target in targets:
            if target.split(".")[0] != "histoclass":
                others.add(target.split(".")[0])
                continue
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                ours.add(target)
    return ours, others


def import_graph(sources: dict[str, str]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = set(sources)
    graph, third = {}, {}
    for name, source in sources.items():
        graph[name], third[name] = imports_of(name, source, modules)
    return graph, third


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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


def violations(sources: dict[str, str]) -> Iterator[str]:
    """Every broken rule, as a sentence naming the modules."""
    graph, third = import_graph(sources)
    for module, targets in graph.items():
        allowed = LOW_LAYERS.get(layer(module))
        for target in targets:
            if allowed is not None and layer(target) not in allowed:
                yield f"{module} (layer {layer(module)}) imports {target}"
    for module in graph:
        closure = reachable(graph, module) | {module}
        for banned in FORBIDDEN_THIRD_PARTY.get(layer(module), ()):
            culprits = sorted(m for m in closure if banned in third[m])
            if culprits:
                yield f"{module} reaches {banned} through {culprits[0]}"
        for banned in FORBIDDEN_OURS.get(layer(module), ()):
            culprits = sorted(m for m in closure if layer(m) == banned)
            if culprits:
                yield f"{module} reaches {culprits[0]}"
    for component in cycles(graph):
        yield "import circle: " + " -> ".join(component)
    yield from floor_violations(graph)


def floor(package: str) -> int:
    found = [level for level, members in enumerate(FLOORS) if package in members]
    assert found, f"package '{package}' is on no floor of FLOORS: add it"
    return found[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package -> the other packages its modules import."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(layer(module), set()).update(
            layer(t) for t in targets if layer(t) != layer(module)
        )
    return packages


def floor_violations(graph: dict[str, set[str]]) -> Iterator[str]:
    packages = package_graph(graph)
    for package, targets in packages.items():
        for target in sorted(targets):
            if floor(target) > floor(package):
                name = package or "histoclass"
                yield f"package {name} (floor {floor(package)}) imports {target} (floor {floor(target)})"
    for component in cycles(packages):
        yield "package circle: " + " -> ".join(component)


def module_level_imports(source: str) -> set[str]:
    """Top-level packages imported when the module is imported (not inside functions or TYPE_CHECKING)."""
    found = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def predictor_constructions(sources: dict[str, str]) -> Iterator[str]:
    """``Predictor(...)`` calls outside :data:`PREDICTOR_MAKERS`: everything else opens one through deploy."""
    for module, source in sources.items():
        if module in PREDICTOR_MAKERS:
            continue
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Predictor"
            ):
                yield f"{module}:{node.lineno}"


def spelled_run_files(sources: dict[str, str]) -> Iterator[str]:
    """String constants outside ``runs/`` that spell a run-directory file name (docstrings stripped first)."""
    pattern = re.compile("|".join(rf"(?<![\w.]){re.escape(n)}" for n in RUN_FILE_NAMES))
    for module, source in sources.items():
        if layer(module) == "runs":
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                spelled = {m.group(0) for m in pattern.finditer(node.value)} - ALLOWED_NAMES.get(
                    module, set()
                )
                if spelled:
                    yield f"{module}:{node.lineno}: {node.value[:60]!r}"


def without_docstrings(sources: dict[str, str]) -> dict[str, str]:
    """Sources with docstrings removed, so prose about files does not count as spelling them."""
    stripped = {}
    for module, source in sources.items():
        tree = ast.parse(source)
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            first = body[0] if isinstance(body, list) and body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                body[0] = ast.Pass()
        stripped[module] = ast.unparse(tree)
    return stripped


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return read_package()


def test_layers_hold_and_there_is_no_circle(sources: dict[str, str]) -> None:
    assert list(violations(sources)) == []


def test_inference_imports_no_torch_until_an_engine_runs(sources: dict[str, str]) -> None:
    heavy = {"torch", "timm", "lightning", "torchvision"}
    loaded = {
        m: module_level_imports(s) & heavy for m, s in sources.items() if layer(m) == "inference"
    }
    assert {m: found for m, found in loaded.items() if found} == {}


def test_one_function_opens_a_predictor(sources: dict[str, str]) -> None:
    assert list(predictor_constructions(sources)) == []
    planted = dict(sources) | {"histoclass.slides.bad": "p = Predictor(engine)\n"}
    assert list(predictor_constructions(planted)) == ["histoclass.slides.bad:1"]


def test_only_runs_spells_run_directory_file_names(sources: dict[str, str]) -> None:
    assert list(spelled_run_files(without_docstrings(sources))) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "histoclass.data.leak",
            "from histoclass.training.job import train\n",
            "imports histoclass.training.job",
        ),
        ("histoclass.runs.heavy", "import torch\n", "reaches torch"),
        ("histoclass.inference.slow", "def f():\n    import lightning\n", "reaches lightning"),
        (
            "histoclass.export.up",
            "from histoclass.training import job\n",
            "reaches histoclass.training",
        ),
        ("histoclass.evaluation.circle", "import histoclass.evaluation.circle2\n", "import circle"),
        (
            "histoclass.inference.up",
            "from histoclass.deploy import open_predictor\n",
            "package inference (floor 5)",
        ),
    ],
)
def test_each_rule_catches_a_violation(
    sources: dict[str, str], module: str, source: str, expected: str
) -> None:
    planted = dict(sources) | {module: source}
    if module.endswith("circle"):
        planted["histoclass.evaluation.circle2"] = "from histoclass.evaluation import circle\n"
    assert any(expected in v for v in violations(planted)), list(violations(planted))


def test_the_file_name_check_catches_a_spelled_name(sources: dict[str, str]) -> None:
    planted = dict(sources) | {"histoclass.serving.bad": 'path = folder / "metrics.json"\n'}
    assert list(spelled_run_files(without_docstrings(planted))) == [
        "histoclass.serving.bad:1: 'metrics.json'"
    ]
