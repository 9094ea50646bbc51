"""Loading a flow from a Python file (``path/to/file.py:flow_name``) and parsing its arguments.

The file is imported as a module under a unique name, registered in ``sys.modules`` and
registered with cloudpickle to pickle by value: worker processes cannot import it by that name,
so its functions and classes travel by value instead (other modules it imports still travel by
reference; the file's directory is put on ``sys.path``, which process workers copy at start).
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import cloudpickle

from ._error_text import error_text

__all__ = ("FlowFileError", "load_flow", "parse_flow_args", "split_target")

_counter = itertools.count()


class FlowFileError(Exception):
    """A flow file or its arguments could not be used; the message says what was wrong."""


def split_target(target: str) -> tuple[str, str]:
    """``"path/to/file.py:name"`` -> ``("path/to/file.py", "name")``."""
    path, sep, name = target.rpartition(":")
    if not sep or not path or not name:
        raise FlowFileError(f"expected FILE.py:FUNCTION (e.g. flows.py:main), got {target!r}")
    if not name.isidentifier():
        raise FlowFileError(f"{name!r} (after the ':' in {target!r}) is not a Python name")
    return path, name


def _module_name(path: str) -> str:
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    return f"asyncflow_flowfile_{stem}_{os.getpid()}_{next(_counter)}"


def load_module(path: str, for_name: str) -> ModuleType:
    """Import the Python file ``path`` as a new module (see the module docstring).

    ``for_name`` (the function looked for) is only used in error messages.
    """
    looking = f"(looking for {for_name!r})"
    if not os.path.exists(path):
        raise FlowFileError(f"no such file: {path} {looking}")
    if os.path.isdir(path):
        raise FlowFileError(f"{path} is a directory, not a Python file {looking}")
    path = os.path.abspath(path)
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FlowFileError(f"{path} cannot be imported as Python {looking}")
    module = importlib.util.module_from_spec(spec)
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        where = exc.filename or path
        where = f"{where}:{exc.lineno}" if exc.lineno else where
        raise FlowFileError(f"syntax error in {where}: {exc.msg} {looking}") from exc
    except Exception as exc:
        del sys.modules[name]
        raise FlowFileError(f"importing {path} raised {error_text(exc)} {looking}") from exc
    cloudpickle.register_pickle_by_value(module)
    return module


def load_flow(path: str, name: str) -> Callable[..., Any]:
    """The callable ``name`` defined in the Python file ``path`` (a ``Flow`` or a function)."""
    module = load_module(path, name)
    try:
        fn = getattr(module, name)
    except AttributeError:
        defined = sorted(
            n
            for n, v in vars(module).items()
            if callable(v)
            and not n.startswith("_")
            and getattr(v, "__module__", None) == module.__name__
        )
        hint = f" (it defines: {', '.join(defined)})" if defined else ""
        raise FlowFileError(f"{path} has no function {name!r}{hint}") from None
    if not callable(fn):
        kind = type(fn).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise FlowFileError(f"{name!r} in {path} is not a function: it is {article} {kind}")
    return fn  # type: ignore[no-any-return]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_flow_args(words: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    """Flow arguments from the command line: ``key=value`` is a keyword argument, anything else
    a positional one; values are parsed as JSON when they parse, else kept as strings."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for word in words:
        key, sep, text = word.partition("=")
        if sep and key.isidentifier():
            if key in kwargs:
                raise FlowFileError(f"flow argument {key!r} is given twice")
            kwargs[key] = _value(text)
        else:
            args.append(_value(word))
    return args, kwargs


def check_call(
    fn: Callable[..., Any], name: str, args: Sequence[Any], kwargs: dict[str, Any]
) -> None:
    """Raise ``FlowFileError`` when ``fn`` cannot be called with these arguments."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to check: the call itself will say
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise FlowFileError(f"flow {name!r} cannot take these arguments: {exc}") from None
