"""Layers point one way: cli -> api/job -> train -> sync -> parallel/compress/monitor -> distributed -> basics.

Every `import shoal.X` in the package (also inside functions) is checked against the layer
table below: a module may import its own layer or lower ones, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[2] / "src" / "shoal"

LAYERS = {
    0: ["errors", "registry", "plugins", "config", "config_doc", "timing"],
    1: ["data", "models", "prep"],
    2: ["distributed"],
    3: ["compress", "parallel", "checkpoint", "run_dir", "run_lock", "run_start", "monitor"],
    4: ["sync"],
    5: ["train", "launch"],
    6: ["api", "job", "export", "report", "plan", "infer", "serve"],
    7: ["cli", "__main__", "__init__"],
}
LAYER_OF = {name: level for level, names in LAYERS.items() for name in names}


def _top(module: str) -> str:
    return module.split(".")[1] if module.startswith("shoal.") else module


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("shoal"):
            if node.module == "shoal":
                found += [f"shoal.{alias.name}" for alias in node.names]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("shoal.")]
    return found


def test_every_package_is_in_the_layer_table():
    tops = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert tops <= LAYER_OF.keys(), f"add to LAYERS: {sorted(tops - LAYER_OF.keys())}"


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in SRC.rglob("*.py"):
        here = path.relative_to(SRC).parts[0].removesuffix(".py")
        for module in _imports(path):
            if module == "shoal":
                continue
            if LAYER_OF[_top(module)] > LAYER_OF[here]:
                upward.append(f"{path.relative_to(SRC)} imports {module}")
    assert not upward, "\n".join(upward)


def test_readme_layout_names_every_module():
    readme = (SRC.parents[1] / "README.md").read_text()
    block = readme[readme.index("## Layout"):]
    block = block[block.index("```") : block.index("```", block.index("```") + 3)]
    missing = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if p.name != "__init__.py" and p.name != "__main__.py" and "prep" not in p.parts and p.name not in block]
    missing += [f"{d.name}/" for d in SRC.iterdir() if (d / "__init__.py").exists() and f"{d.name}/" not in block]
    assert not missing, f"README's layout section does not name: {missing}"
