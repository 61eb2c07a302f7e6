"""The package's import graph, read from its source: no circle between its parts, nothing imports
tools/, no import of the package hidden inside a function, and the deployment runner imports
neither the package nor detectron2."""
import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "projects", "cityscapes_ft")


def package_modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                yield rel[:-len(".__init__")] if rel.endswith("__init__") else rel, path


def imported_modules(module, path):
    """(absolute name inside cityscapes_ft or an outside module, inside a function?) per import."""
    tree = ast.parse(open(path).read())
    package_parts = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[:len(package_parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                yield "cityscapes_ft." + target if target else "cityscapes_ft", id(node) in in_function
            else:
                yield node.module, id(node) in in_function
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in in_function


def part(name):
    """The top-level part of the package a module belongs to (engine, data, config, ...)."""
    return name.split(".")[1] if name.startswith("cityscapes_ft.") else None


def test_parts_import_one_way_and_never_inside_functions():
    edges, hidden = {}, []
    for module, path in package_modules():
        for target, in_function in imported_modules(module, path):
            if target and (target.startswith("tools") or target.startswith("cityscapes_ft")):
                assert not target.startswith("tools"), f"{module} imports {target}"
                if in_function:
                    hidden.append(f"{module} -> {target}")
                a, b = module.split(".")[0], part(target)
                if b and a != b:
                    edges.setdefault(a, set()).add(b)
    assert hidden == []

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,))) for n in edges.get(start, ()))

    circles = sorted(a for a in edges if reaches(a, a))
    assert circles == [], {a: sorted(edges[a]) for a in circles}
    assert "engine" in edges["export"] and "export" not in edges.get("engine", set())


def test_the_deployment_runner_imports_only_torch_and_the_standard_library():
    path = os.path.join(PACKAGE, "export", "runtime.py")
    outside = {t.split(".")[0] for t, _ in imported_modules("export.runtime", path)}
    assert outside <= {"argparse", "json", "os", "typing", "torch", "torchvision", "onnxruntime"}, outside
