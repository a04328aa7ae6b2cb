"""The backend contract (minicnn/backend/contract.py) holds: every backend defines exactly the declared
ops with the declared parameters; nothing above the door imports a backend's insides or asks which
backend runs; the package has no import cycle. Read from the source, so the CuPy backend is checked
on machines without a GPU too."""
import ast
import inspect
import os

import pytest

from minicnn.backend import contract

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "minicnn")
ABOVE_THE_DOOR = ["nn", "optim", "models", "data", "distributed", "train.py", "cli.py", "checkpoint.py", "plot.py",
                  "gradcheck.py", "random.py", "early_stopping.py", "lr_finder.py", "export.py", "interop.py",
                  "testing.py", "__init__.py"]
BACKEND_INSIDES = ("cupy", "cupyx", "numba", "llvmlite", "minicnn.backend.")      # a prefix each
ALLOWED_FROM_BACKEND = {"minicnn.backend", "minicnn.backend.contract"}


def test_the_contract_declares_every_op_with_a_docstring():
    assert len(contract.OPS) >= 30
    for name, op in contract.OPS.items():
        assert op.__doc__ and len(op.__doc__) > 20, f"{name} needs a docstring with shapes"


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_cpu_backends_meet_the_contract_exactly(name):
    from minicnn import backend
    try:
        module = backend._load(name)
    except ImportError as err:
        pytest.skip(str(err))
    assert contract.problems(module) == []


def test_a_backend_that_misses_or_changes_an_op_is_refused():
    """The check catches a missing op, other parameters, and a public name outside the table."""
    import types

    from minicnn import backend
    from minicnn.backend import numpy_ops
    fake = types.ModuleType("fake_ops")
    fake.__dict__.update({k: v for k, v in vars(numpy_ops).items() if not k.startswith("__")})
    del fake.tanh_backward
    fake.relu_forward = lambda x, inplace: x
    fake.helper = lambda: None
    problems = contract.problems(fake)
    assert any("missing op tanh_backward" in p for p in problems)
    assert any(p.startswith("relu_forward(x, inplace)") for p in problems)
    assert any("helper" in p for p in problems)
    with pytest.raises(TypeError, match="does not meet the contract"):
        backend.check_backend(fake)


def _source(module):
    with open(os.path.join(PACKAGE, "backend", module + ".py")) as f:
        return ast.parse(f.read())


def _ast_signatures(module):
    """name -> parameter names of the public functions a backend file defines, following
    `name = other_module.name` (or `= other_module.other_name`) assignments into other files."""
    tree = _source(module)
    aliases = {}                                  # local name -> backend module file it came from
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                if node.module is None:           # from . import x as y
                    aliases[alias.asname or alias.name] = alias.name
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            found[node.name] = [a.arg for a in node.args.args]
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
            if target.startswith("_"):
                continue
            if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id in aliases:
                found[target] = _ast_signatures(aliases[value.value.id]).get(value.attr, "unresolved")
            else:
                found[target] = "attribute"
    return found


def test_the_cupy_backend_meets_the_contract_read_from_its_source():
    """cupy_ops cannot be imported without CuPy: its functions and aliases are read from the files."""
    found = _ast_signatures("cupy_ops")
    for name in contract.OPS:
        assert name in found, f"cupy_ops lacks {name}"
        assert found[name] == list(contract.signature(name).parameters), f"cupy_ops.{name}{found[name]}"
    for name in contract.ATTRIBUTES:
        assert found.get(name) == "attribute", f"cupy_ops lacks the attribute {name}"
    extra = set(found) - set(contract.OPS) - set(contract.ATTRIBUTES)
    assert not extra, f"public names outside the contract in cupy_ops: {sorted(extra)}"


def _python_files(entries):
    for entry in entries:
        path = os.path.join(PACKAGE, entry)
        if os.path.isdir(path):
            for root, _, files in os.walk(path):
                yield from (os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))
        else:
            yield path


def _module_name(path):
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path):
    """Every module a file imports, at any depth (imports inside functions count), resolved to
    absolute names; `from pkg import sub` counts as importing pkg.sub when sub is a module."""
    with open(path) as f:
        tree = ast.parse(f.read())
    name = _module_name(path)
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = os.path.exists(os.path.join(os.path.dirname(PACKAGE), *candidate.split(".")) + ".py") \
                    or os.path.isdir(os.path.join(os.path.dirname(PACKAGE), *candidate.split(".")))
                found.append(candidate if is_module else base)
    return found, tree


@pytest.mark.parametrize("path", list(_python_files(ABOVE_THE_DOOR)),
                         ids=lambda p: os.path.relpath(p, PACKAGE))
def test_nothing_above_the_door_reaches_into_a_backend(path):
    """Layers, optimizers, models, data, fit, the CLI, checkpoints and plots use backend's door
    (ops_for, the conversions) and the contract's ops; they import no backend module, no numba or
    cupy, and never ask which backend they got."""
    imports, tree = _imports(path)
    bad = [m for m in imports if m.startswith(BACKEND_INSIDES) and m not in ALLOWED_FROM_BACKEND]
    assert not bad, f"{os.path.relpath(path, PACKAGE)} imports {bad}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "is_cupy_array":
            pytest.fail(f"{os.path.relpath(path, PACKAGE)}:{node.lineno} tests is_cupy_array")
        if isinstance(node, ast.Name) and node.id == "is_cupy_array":
            pytest.fail(f"{os.path.relpath(path, PACKAGE)}:{node.lineno} tests is_cupy_array")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr") \
                and node.args and "ops" in ast.unparse(node.args[0]):
            pytest.fail(f"{os.path.relpath(path, PACKAGE)}:{node.lineno} probes a backend: {ast.unparse(node)}")


def test_the_package_has_no_import_cycle():
    """Between minicnn's modules, imports inside functions included."""
    graph = {}
    for path in _python_files(["."]):
        name = _module_name(path)
        graph[name] = {m for m in _imports(path)[0] if m.startswith("minicnn") and m != name}
    for name in graph:                            # an import of a package's module is an edge to it, not to the package
        graph[name] = {m for m in graph[name] if m in graph}
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_every_op_the_layers_call_is_in_the_contract():
    """The ops called as ops.<name> or backend.ops_for(x).<name> above the door are declared ones."""
    called = set()
    for path in _python_files(ABOVE_THE_DOOR):
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                owner = ast.unparse(node.value)
                if owner in ("ops", "saved.ops", "s.ops", "self.ops", "totals.ops") or owner.startswith("backend.ops_for("):
                    called.add(node.attr)
    unknown = called - set(contract.OPS) - set(contract.ATTRIBUTES)
    assert not unknown, f"called but not declared: {sorted(unknown)}"
    assert {"conv2d_forward", "maxpool2d_backward", "sgd_update", "plan_chain"} <= called


def test_stub_signatures_are_plain():
    """The declared ops take positional parameters only (backends are called positionally)."""
    for name, op in contract.OPS.items():
        for p in inspect.signature(op).parameters.values():
            assert p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty, f"{name}: {p}"
