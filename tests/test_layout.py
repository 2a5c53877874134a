"""The house's rules, checked on the code itself: each floor imports only its own floor and those
below it (every import, inside functions too), the pipeline runtime imports nothing of the local
development stack (``devstack``), and only ``common/settings.py`` reads environment variables."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT

RUNTIME = ("common", "serving", "bronze", "silver", "gold", "data_quality", "app")

# The floors, from the ground up: the floor every part uses; the stages; serving (what reads the
# lake for its users); data quality; on top the app (the CLI, the runner, the pipeline's graph)
# and the development tools.
FLOORS = (("common",), ("bronze", "silver", "gold"), ("serving",), ("data_quality",), ("app", "devstack", "bench"))


# The app's commands that exist for the local development stack: the demo and the JVM's class
# archive (both run the pipeline on it).
ON_THE_DEV_STACK = ("app.demo", "app.jvm")


def _modules() -> list[str]:
    return sorted(m for m in (".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                              for pkg in RUNTIME for p in (ROOT / pkg).rglob("*.py")) if m not in ON_THE_DEV_STACK)


def test_the_runtime_imports_without_the_development_stack():
    """Every runtime module imports in a process where ``devstack`` cannot be imported at all."""
    modules = _modules()
    assert len(modules) > 25 and "common.spark" in modules and "silver.job" in modules
    probe = (
        "import importlib, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'devstack' or name.startswith('devstack.'):\n"
        "            raise ImportError('devstack is blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "assert not [m for m in sys.modules if m.startswith('devstack')]\n"
        "print('ok', len(" + repr(modules) + "))\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ")


def _environment_reads(path) -> list[int]:
    """Lines of ``path`` that read the process environment (``os.environ`` other than an
    assignment to one of its keys or ``setdefault``, and ``os.getenv``)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr == "getenv":
                lines.append(node.lineno)
            elif node.attr == "environ":
                parent = parents.get(node)
                written = (isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store)) or \
                          (isinstance(parent, ast.Attribute) and parent.attr == "setdefault")
                if not written:
                    lines.append(node.lineno)
    return lines


def test_only_settings_reads_the_environment():
    reads = {str(p.relative_to(ROOT)): _environment_reads(p)
             for pkg in RUNTIME + ("devstack",) for p in (ROOT / pkg).rglob("*.py")}
    assert reads["common/settings.py"]  # the one place, so the check itself looks at the right code
    assert {f: lines for f, lines in reads.items() if lines and f != "common/settings.py"} == {}


def _floor(module: str) -> int:
    return next(i for i, names in enumerate(FLOORS) if module.split(".")[0] in names)


def _imports(path) -> set[str]:
    """Every module of the house that ``path`` imports, at any depth (functions, ``if`` blocks)."""
    ours = {name for names in FLOORS for name in names}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] in ours and len(parts) > 1:
                module = ".".join(parts[:2])
                if (ROOT / parts[0] / f"{parts[1]}.py").exists():
                    found.add(module)
    return found


def test_no_import_runs_up_a_floor():
    up = set()
    for pkg in RUNTIME:
        for path in (ROOT / pkg).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            up |= {(module, target) for target in _imports(path) if _floor(target) > _floor(module)}
    assert "devstack.stack" in _imports(ROOT / "app" / "cli.py")  # imported inside a function: seen
    assert up == set(), f"imports up a floor: {sorted(up)}"
