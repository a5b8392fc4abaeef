"""The package's layers: no module imports from a layer above its own (checked on the source)."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "raytrain")

# Lowest first. A module may import its own layer and the ones before it.
LAYERS = [
    ["raytrain.errors", "raytrain.env", "raytrain.compat"],
    ["raytrain.config"],
    ["raytrain.data", "raytrain.models", "raytrain.execution"],
    ["raytrain.run", "raytrain.space", "raytrain.frameworks", "raytrain.backend"],
    ["raytrain.worker", "raytrain.cluster", "raytrain.modes"],
    ["raytrain.trainer", "raytrain.evaluate"],
    ["raytrain.tuning"],
    ["raytrain.bench"],
    ["raytrain.cli", "raytrain.__main__", "raytrain"],
]
# Inside raytrain.data, the same rule in the order the data path is built up.
DATA_ORDER = ["schema", "store", "cache", "h5", "hdf5_reader", "hdf5_remote", "image_reader", "order", "split", "plan", "shard", "hdf5_index",
              "image_index", "ray_datasets", "loader", "hdf5_loader", "image_loader", "kinds", "feed", "synth"]


def _modules():
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def _imports(path, module):
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base != "raytrain":  # `from raytrain import config` imports raytrain.config, not the root
                yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def _layer(module):
    best = None
    for rank, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[1]):
                best = (rank, len(name))
    return None if best is None else best[0]


def test_every_module_has_a_layer():
    assert [m for m, _ in _modules() if _layer(m) is None] == []


def test_no_module_imports_from_a_layer_above():
    wrong = []
    for module, path in _modules():
        for target in _imports(path, module):
            if target.startswith("raytrain") and _layer(target) is not None and _layer(target) > _layer(module):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_data_path_only_imports_earlier_stages():
    wrong = []
    for module, path in _modules():
        if not module.startswith("raytrain.data."):
            continue
        own = DATA_ORDER.index(module.split(".")[2])
        for target in _imports(path, module):
            parts = target.split(".")
            if target.startswith("raytrain.data.") and parts[2] in DATA_ORDER and DATA_ORDER.index(parts[2]) > own:
                wrong.append(f"{module} imports {target}")
    assert wrong == []
