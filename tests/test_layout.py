"""The package's import structure: no cycle, and no import against the layer order below.

Every `import` / `from ... import` in altclip_np/ and kernels/ (installed as altclip_np.kernels) is read with
`ast`, function-local ones included (a function-local import hides a cycle from Python, not from a reader).
Each module belongs to one group; a group may import only the groups it lists. So the model's maths never
imports loading or preprocessing, preprocessing never imports the model, and nothing imports the command.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {  # group: its modules (altclip_np.<name>)
    "kernels": {"kernels", "kernels._jit", "kernels._tile", "kernels.attention", "kernels.elementwise",
                "kernels.gemm_ladder", "kernels.matmul"},
    "foundation": {"", "config", "outputs", "encoding", "backend", "runtime", "autotune"},  # "": __init__
    "loading": {"hub", "weights", "torch_pickle", "panels"},
    "maths": {"layers", "vision", "text", "fast", "inputs"},
    "preprocessing": {"charsmap", "graphemes", "grapheme_table", "tokenizer", "image_processing", "processor"},
    "models": {"model"},
    "applications": {"features", "index", "ann", "cluster", "parity"},
    "command": {"cli", "__main__"},
}
MAY_IMPORT = {  # group: the other groups it may import (the layer order, lowest first)
    "kernels": set(),
    "foundation": {"kernels"},
    "loading": {"foundation"},
    "maths": {"foundation", "kernels"},
    "preprocessing": {"foundation", "loading"},
    "models": {"foundation", "kernels", "loading", "maths"},
    "applications": {"foundation", "kernels", "loading", "maths", "preprocessing", "models"},
    "command": {"foundation", "kernels", "loading", "maths", "preprocessing", "models", "applications"},
}


def module_files():  # {module name relative to altclip_np ("" for the package itself): path}
    files = {}
    for folder, prefix in ((ROOT / "altclip_np", ""), (ROOT / "kernels", "kernels.")):
        for path in sorted(folder.glob("*.py")):
            name = prefix + path.stem if path.stem != "__init__" else prefix.rstrip(".")
            files[name] = path
    return files


def imports_of(name, path, known):
    """The altclip_np modules that module `name` imports, anywhere in its body."""
    is_package = path.stem == "__init__"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
                absolute = "altclip_np" + ("." + module if module else "")
            else:
                absolute = node.module
            targets = [(absolute, a.name) for a in node.names]
        else:
            continue
        for module, member in targets:
            if module != "altclip_np" and not module.startswith("altclip_np."):
                continue
            inner = module[len("altclip_np."):] if module != "altclip_np" else ""
            submodule = f"{inner}.{member}" if inner else member  # `from . import x` / `from .kernels import y`
            if member is not None and submodule in known:
                found.add(submodule)
            else:
                assert inner in known, f"{path}: imports {module}, which is no module of the package"
                found.add(inner)
    found.discard(name)
    return found


def graph():
    files = module_files()
    return {name: imports_of(name, path, files) for name, path in files.items()}


def group_of(name):
    return next(group for group, members in GROUPS.items() if name in members)


def test_every_module_has_a_group():
    grouped = set().union(*GROUPS.values())
    assert set(module_files()) - grouped == set(), "put each new module into one GROUPS entry"
    assert grouped - set(module_files()) == set(), "GROUPS names a module that is gone"


def test_no_import_goes_against_the_layer_order():
    wrong = [f"{name} ({group_of(name)}) imports {target} ({group_of(target)})"
             for name, targets in graph().items() for target in sorted(targets)
             if group_of(target) != group_of(name) and group_of(target) not in MAY_IMPORT[group_of(name)]]
    assert wrong == []


def test_no_import_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(name, path):  # depth first; a module met again while still on the path closes a cycle
        state[name] = "open"
        for target in sorted(edges[name]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_check_sees_function_local_and_relative_imports(tmp_path):  # the parser itself, on known input
    path = tmp_path / "probe.py"
    path.write_text("from . import fast\nfrom .kernels import warmup\nfrom .kernels._tile import JIT\n"
                    "def f():\n    from .cli import main\n    import altclip_np.model\n")
    known = set(module_files())
    assert imports_of("probe", path, known) == {"fast", "kernels", "kernels._tile", "cli", "model"}
    path.write_text("from ._jit import kernel\nfrom .. import layers\n")
    assert imports_of("kernels.probe", path, known) == {"kernels._jit", "layers"}
