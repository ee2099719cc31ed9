"""The shape of the code: one package per process, imports pointing only down, one error module.

The import graph is read from the source (every ``import`` statement, those inside functions
too), so an import hidden in a function cannot hide a cycle or a reach upwards. The sides are
proven in fresh interpreters: what a TF node or an executor task really loads.
"""
from __future__ import annotations

import ast
import inspect
import json
import pathlib
import re
import subprocess
import sys

import pytest

import tfos
from tfos.core import errors

REPO = pathlib.Path(__file__).resolve().parents[2]

# Package -> layer. An import may go to the same package or to a lower layer, never to a
# higher one or to a sibling of the same layer (the executor task and the TF node never import
# each other). A new package must be placed here before it may exist.
LAYERS = {
    "rdma": 0,
    "tfos.core": 1,
    "tfos.executor": 2,
    "tfos.node": 2,
    "tfos.driver": 3,
    "tfos.ml": 4,        # Spark ML and data formats: driver and the tasks of its jobs
    "tfos": 5,           # the public face: tfos/__init__.py (and TFoS's public module names)
}
# Third-party packages a layer must never import.
FORBIDDEN = {
    "rdma": {"tfos", "pyspark", "grpc", "tensorflow"},
    "tfos.core": {"pyspark", "grpc", "tensorflow"},
    "tfos.executor": {"tensorflow"},
    "tfos.node": {"pyspark", "grpc"},
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for top in ("tfos", "rdma") for p in (REPO / top).rglob("*.py")}


def package_of(module: str) -> str:
    """The package of ``LAYERS`` a module belongs to (its longest listed prefix)."""
    candidates = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    if not candidates:
        raise AssertionError(f"{module} is in no package of LAYERS: place its package there")
    best = max(candidates, key=len)
    # A module directly in tfos/ (not the package's __init__) is part of the public face.
    return best


def imports(module: str) -> set[str]:
    """Every module ``module`` imports (ours resolved to modules, others by top-level name)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return found


GRAPH = {module: {i for i in imports(module) if i in MODULES} for module in MODULES}


def test_every_package_says_which_process_it_runs_in_and_what_it_may_import():
    for package in ("tfos.core", "tfos.driver", "tfos.executor", "tfos.node"):
        doc = inspect.getdoc(__import__(package, fromlist=["_"])) or ""
        assert re.search(r"^The (pure core|driver|executor task|TF node)", doc), package
        assert "May import:" in doc, package


def test_the_import_graph_has_no_cycle():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module):   # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(GRAPH[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in GRAPH[module]:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == []


def test_imports_only_point_down():
    upward = []
    for module, targets in GRAPH.items():
        source = package_of(module)
        for target in targets:
            destination = package_of(target)
            if destination != source and LAYERS[destination] >= LAYERS[source]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_layer_imports_what_its_process_must_not_load():
    found = []
    for module in MODULES:
        banned = FORBIDDEN.get(package_of(module), set())
        for name in imports(module):
            if name.split(".")[0] in banned:
                found.append(f"{module} imports {name}")
    assert found == []


def test_tfrecords_need_no_tensorflow_in_the_tasks():
    for module in ("tfos.ml.dfutil", "tfos.core.tfrecord"):
        assert not [i for i in imports(module) if i.split(".")[0] == "tensorflow"], module


def test_the_layering_check_catches_an_upward_import():
    # The rules above are not vacuous: the graph holds the edges they judge.
    assert "tfos.executor.feed_task" in GRAPH["tfos.driver.feed_jobs"]
    assert "tfos.core.launch" in GRAPH["tfos.node.main"]
    assert LAYERS[package_of("tfos.node.main")] == LAYERS[package_of("tfos.executor.node_task")]


def loaded_modules(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True, cwd=REPO)
    return json.loads(out.stdout.splitlines()[-1])


def offending(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


def test_a_tf_node_process_loads_no_spark_no_grpc_and_no_driver():
    modules = loaded_modules(
        "import tfos.node.main, tfos.node.context, tfos.node.data_feed, tfos.node.feed_server\n"
        "import tfos\ntfos.TFNode, tfos.NodeContext, tfos.InputMode, tfos.ClusterFailed")
    assert "tfos.node.main" in modules and "tfos.node.feed_server" in modules
    assert offending(modules, ("pyspark", "py4j", "grpc", "tfos.driver", "tfos.executor")) == []


def test_an_executor_task_loads_no_tensorflow_and_no_driver():
    modules = loaded_modules("import tfos.executor.node_task, tfos.executor.feed_task")
    assert "tfos.executor.control_client" in modules   # the node task's client of the driver
    assert offending(modules, ("tensorflow", "keras", "tfos.driver", "tfos.node")) == []


def test_importing_tfos_loads_only_its_core_until_the_driver_is_used():
    modules = loaded_modules("import tfos")
    assert offending(modules, ("pyspark", "grpc", "tensorflow", "tfos.driver", "tfos.node",
                               "tfos.executor")) == []
    modules = loaded_modules("import tfos\ntfos.TFCluster, tfos.cli.argument_parser")
    assert "tfos.driver.cluster" in modules and "tfos.driver.cli" in modules


def test_every_public_name_of_tfos_resolves():
    for name in tfos.__all__:
        assert getattr(tfos, name) is not None, name
    assert set(tfos.__all__) <= set(dir(tfos))
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        tfos.nonsense  # noqa: B018


def all_error_classes() -> set[type]:
    found, todo = set(), [errors.TfosError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_class_lives_in_the_errors_module_and_is_exported():
    for module in sorted(MODULES):
        if module.startswith("tfos"):
            __import__(module)
    classes = all_error_classes()
    assert len(classes) >= 15
    for cls in classes:
        assert cls.__module__ == "tfos.core.errors", cls
        assert getattr(tfos, cls.__name__) is cls and cls.__name__ in tfos.__all__, cls


def test_every_error_the_readme_names_is_importable_from_tfos():
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"`(?:tfos\.)?([A-Z]\w*(?:Error|Failed|Timeout|Unreachable))`",
                           readme))
    assert {"ClusterFailed", "FeedJobFailed", "ConfigError", "PreflightError"} <= named
    for name in named:
        assert issubclass(getattr(tfos, name), tfos.TfosError), name
