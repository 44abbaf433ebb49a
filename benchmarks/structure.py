"""How the code is wired, measured from the source: one JSON line.

    .venv/bin/python benchmarks/structure.py

- import_cycles: strongly connected components of stardss/'s import graph (every import, also
  those inside functions); upward_imports: arrows against the layers of tests/unit/
  test_layering.py (both 0 is what that test enforces).
- config_casts: int()/float()/bool() applied straight to a config attribute or key
  (`int(job.seed)`, `float(train["lr"])`): what a typed config makes unnecessary.
- functions_taking_job: functions with a parameter named `job` (the whole job config), in the
  command layer and below it.
- lines: the longest modules and how many are over 400 lines.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.unit.test_layering import (  # noqa: E402  (the layers are defined once, there)
    LAYERS,
    all_modules,
    cycles,
    import_graph,
    layer_of,
    upward_imports,
)

# A cast of a config value: the argument is a name followed by attributes or string keys.
CONFIG_ROOTS = ("job", "cfg", "config", "train", "t", "a", "sc", "scoring", "ref_cfg", "r",
                "lora", "actors", "steps", "rule", "tiny", "eval_cfg", "star_cfg", "spec",
                "reference", "loss")
CAST = re.compile(r"\b(?:int|float|bool)\((?:%s)(?:\.[A-Za-z_]\w*|\[\"\w+\"\])+\)"
                  % "|".join(CONFIG_ROOTS))


def functions_taking_job(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            if any(a.arg == "job" for a in args):
                out.append(node.name)
    return out


def main() -> None:
    graph = import_graph()
    modules = all_modules()
    casts, taking, lines = 0, {"command": [], "below": []}, {}
    for name, path in modules.items():
        text = path.read_text(encoding="utf-8")
        casts += len(CAST.findall(text))
        side = "command" if layer_of(name) <= 1 else "below"
        taking[side] += [f"{name}:{f}" for f in functions_taking_job(path)]
        lines[str(path.relative_to(ROOT))] = text.count("\n")
    longest = sorted(lines.items(), key=lambda kv: -kv[1])[:5]
    print(json.dumps({
        "modules": len(modules),
        "import_cycles": len(cycles(graph)),
        "modules_in_cycles": sum(len(c) for c in cycles(graph)),
        "upward_imports": len(upward_imports(graph)),
        "config_casts": casts,
        "functions_taking_job_command_layer": len(taking["command"]),
        "functions_taking_job_below": len(taking["below"]),
        "below_taking_job": taking["below"],
        "modules_over_400_lines": sum(n > 400 for n in lines.values()),
        "longest_modules": dict(longest),
        "layers": [name for name, _ in LAYERS],
    }))


if __name__ == "__main__":
    main()
