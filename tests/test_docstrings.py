"""Every code name a docstring in ``src/celeriac`` mentions exists.

A docstring that still names a method after it was renamed sends its reader
looking for code that is not there. This test reads every docstring (module,
class, function, and the string under an attribute) with ``ast`` and checks
the references that look like code, written ``Name`` (double backquotes) or
with a Sphinx role (``:class:`Name```, ``:func:``, ``:meth:``, ``:mod:``):

* ``Name`` or ``Name.attr``, ``Name`` in CamelCase or a CONSTANT_NAME: a name
  the package defines or imports (or a builtin); ``attr`` is an attribute of
  that class: a method, a class attribute, a dataclass field, or ``self.attr``
  set in the class or in a class of the package it derives from.
* ``_private`` names: defined somewhere in the package.
* Calls, ``name()`` or ``obj.name(args)``: the callee by the rules here; on a
  variable (``task.s()``) the method name must be defined somewhere.
* Dotted names that start with ``celeriac`` or with a module the package imports
  (``asyncio.wait_for``): imported and looked up for real. A module that does
  not import here (an optional driver) is skipped.

Everything else in backquotes is prose to this test: settings, URLs, SQL,
Redis commands, AMQP arguments, lowercase parameter names.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src" / "celeriac"

NOT_CODE = frozenset(
    {
        "Celery",  # the project celeriac is compatible with
        "celeriac.db",  # the default SQLite file
        "celeriac.broker",  # a logger
        "Pceleriac.dead",  # AMQP names, ``P`` standing for the prefix
        "Pceleriac.delay.deliver",
        "Pceleriac.beat",
        "Pceleriac.beat.latest",
        "CELERY_BROKER_URL",  # a Django setting
        "PyThreadState_SetAsyncExc",  # CPython's C API
        "call_later",  # an event loop's method
        "CERT_NONE",  # ssl's spelling, as Celery's settings take it
    }
)
"""Names in backquotes that look like code but name nothing in Python here."""

ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):`~?([^`]+)`")
LITERAL = re.compile(r"(?<!`)``([^`]+)``(?!`)")
CALL = re.compile(r"^([A-Za-z_][\w.]*)\((.*)\)$")
DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
CAMEL = re.compile(r"^_?[A-Z]\w*[a-z]\w*$")
PRIVATE = re.compile(r"^_[A-Za-z0-9]\w*$")
CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9]*_[A-Z0-9_]+$")


@dataclass
class ClassInfo:
    module: str
    attrs: set[str] = field(default_factory=set)
    bases: list[str] = field(default_factory=list)


@dataclass
class Index:
    """What the package defines, read from its source."""

    defined: set[str] = field(default_factory=set)
    classes: dict[str, list[ClassInfo]] = field(default_factory=dict)
    imported: dict[str, str] = field(default_factory=dict)
    """name -> the dotted path it was imported from"""
    modules: set[str] = field(default_factory=set)
    """top-level modules the package imports (``asyncio``, ``redis``, ...)"""
    own_modules: set[str] = field(default_factory=set)
    """the names of the package's modules and packages (``_sync``, ``brokers``)"""
    local: dict[str, set[str]] = field(default_factory=dict)
    """module -> the names defined or imported in it"""


def module_name(path: Path) -> str:
    parts = [SOURCE.name, *path.relative_to(SOURCE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SOURCE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _class_info(node: ast.ClassDef, module: str) -> ClassInfo:
    info = ClassInfo(module, bases=[ast.unparse(b).split("[")[0] for b in node.bases])
    for child in ast.walk(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            info.attrs.add(child.name)
        elif (
            isinstance(child, ast.Attribute)
            and isinstance(child.ctx, ast.Store)
            and isinstance(child.value, ast.Name)
            and child.value.id in ("self", "cls")
        ):
            info.attrs.add(child.attr)
    for stmt in node.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else []
        if isinstance(stmt, ast.AnnAssign):
            targets = [stmt.target]
        info.attrs.update(t.id for t in targets if isinstance(t, ast.Name))
    return info


def build_index() -> Index:
    index = Index()
    for path, tree in source_files():
        module = module_name(path)
        local = index.local.setdefault(module, set())
        index.own_modules.update(module.split("."))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                index.classes.setdefault(node.name, []).append(_class_info(node, module))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                local.add(node.name)
            elif isinstance(node, ast.arg):
                local.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                local.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                local.add(node.attr)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                local.update(_imports(node, module, path, index))
        index.defined |= local
    index.defined |= index.own_modules
    index.modules = {m.split(".")[0] for m in index.imported.values()} - {""}
    return index


def _imports(node: ast.Import | ast.ImportFrom, module: str, path: Path, index: Index) -> set[str]:
    """The names ``node`` binds, recorded in ``index.imported`` with where they come from."""
    names = set()
    for alias in node.names:
        if isinstance(node, ast.Import):
            origin = alias.name
        else:
            origin = f"{_absolute(module, node, path.name == '__init__.py')}.{alias.name}"
        bound = alias.asname or alias.name.split(".")[0]
        index.imported[bound] = (
            origin if alias.asname or isinstance(node, ast.ImportFrom) else bound
        )
        names.add(bound)
    return names


def docstrings(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Module, class and function docstrings, and the strings that document attributes."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            yield node.lineno, node.value.value


def references(text: str) -> Iterator[str]:
    yield from ROLE.findall(text)
    yield from LITERAL.findall(ROLE.sub("", text))


def _lookup(dotted: str, index: Index) -> str | None:
    """Import the longest module prefix of ``dotted``, look up the rest; why it fails, or None."""
    if "__main__" in dotted:
        return None  # importing it would run the command
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            if cut == 1 and parts[0] != "celeriac":
                return None  # an optional driver not installed here: nothing to check
            continue
        for depth, attr in enumerate(parts[cut:], start=cut):
            if isinstance(obj, type):
                return _class_attr(obj.__name__, parts[depth], index, obj)
            if not hasattr(obj, attr):
                return f"{'.'.join(parts[:depth])} has no {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"no module {parts[0]!r}"


def _class_attr(name: str, attr: str, index: Index, obj: object = None) -> str | None:
    """None if class ``name`` (of the package, or ``obj``) has ``attr``, in source or at runtime."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for info in index.classes.get(current, []):
            if attr in info.attrs:
                return None
            todo.extend(base.split(".")[-1] for base in info.bases)
            cls = getattr(importlib.import_module(info.module), current, None)
            if cls is not None and (
                hasattr(cls, attr) or attr in getattr(cls, "__dataclass_fields__", {})
            ):
                return None
    if obj is not None and hasattr(obj, attr):
        return None
    return f"{name} has no attribute {attr!r}"


def _external(name: str, index: Index) -> bool:
    """Whether a module the package imports has ``name`` (``Handle`` in asyncio)."""
    for module in sorted(index.modules - {"celeriac"}):
        try:
            if hasattr(importlib.import_module(module), name):
                return True
        except ImportError:
            continue
    return False


def check(ref: str, index: Index, module: str = "celeriac") -> str | None:
    """Why ``ref`` names nothing that exists, or None (it exists, or it is not a code name).

    A private name (``_fetch``, ``self._fetch()``) must be defined in ``module``, the
    module whose docstring names it.
    """
    ref = ref.strip()
    call = CALL.match(ref)
    name = call.group(1) if call else ref
    if not DOTTED.match(name) or name in NOT_CODE:
        return None
    parts = name.split(".")
    first, last = parts[0], parts[-1]
    if first == "celeriac" or (len(parts) > 1 and first in index.modules):
        return _lookup(name, index)
    if PRIVATE.match(name) or (first == "self" and PRIVATE.match(last)):
        found = last in index.local.get(module, set()) or last in index.own_modules
        return None if found else f"nothing in {module} is named {last!r}"
    if CAMEL.match(first) or CONSTANT.match(first) or first.startswith("_"):
        if first in index.classes and len(parts) > 1:
            return _class_attr(first, parts[1], index)
        if first in index.imported and len(parts) > 1:
            return _lookup(f"{index.imported[first]}.{'.'.join(parts[1:])}", index)
        if len(parts) > 1 and hasattr(builtins, first):
            return None if hasattr(getattr(builtins, first), parts[1]) else f"no {name}"
        if first in index.defined or hasattr(builtins, first) or _external(first, index):
            return None
        return f"nothing in the package is named {first!r}"
    if (call or last.startswith("_")) and last not in index.defined and not hasattr(builtins, last):
        return f"nothing in the package is named {last!r}"
    return None


def stale_references() -> list[str]:
    index = build_index()
    found = []
    for path, tree in source_files():
        for line, text in docstrings(tree):
            for ref in references(text):
                why = check(ref, index, module_name(path))
                if why:
                    where = path.relative_to(SOURCE.parent)
                    found.append(f"{where}:{line}: ``{ref}``: {why}")
    return sorted(set(found))


def test_docstrings_name_code_that_exists() -> None:
    stale = stale_references()
    print("\n".join(stale) or "every name in a docstring exists")
    assert not stale, "docstrings name code that does not exist:\n" + "\n".join(stale)


def test_the_check_finds_a_stale_name_and_passes_real_ones() -> None:
    index = build_index()
    assert check("Celeriac.send_outgoing", index) == "Celeriac has no attribute 'send_outgoing'"
    assert (
        check("_take", index, "celeriac.sending") == "nothing in celeriac.sending is named '_take'"
    )
    assert check("_no_such_helper()", index) == "nothing in celeriac is named '_no_such_helper'"
    assert check("self._no_such()", index, "celeriac.app") is not None
    assert check("_run", index, "celeriac.worker.process") is None
    assert check("celeriac.sending.no_such", index) == "celeriac.sending has no 'no_such'"
    assert check("NoSuchClass.method()", index) == "nothing in the package is named 'NoSuchClass'"
    for real in (
        "Celeriac.send_task",
        "celeriac.shared_storage",
        "celeriac.worker.middleware.middleware_for",
        "Broker.storage",  # an instance attribute, set as a class default
        "ResultBackend.store",
        "asyncio.wait_for",
        "run_sync()",
        "task.s()",
        "ValueError",
        "broker_lease_timeout",  # a setting: prose here
        "XREAD BLOCK",
        "sqlite:///relative.db",
    ):
        assert check(real, index) is None, real
