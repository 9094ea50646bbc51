"""How a parameters dict maps onto a function's signature, checked cheaply at every submit."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ("CallSpec",)

_P = inspect.Parameter


class CallSpec:
    """The signature of a task body, reduced to what ``submit`` needs on its hot path.

    A parameters dict maps parameter names to values. A ``*args`` parameter takes a sequence
    under its own name; names the signature does not know go to ``**kwargs`` when there is one.
    """

    __slots__ = (
        "leading",
        "names",
        "positional",
        "required",
        "signature",
        "simple",
        "varkw",
        "varpos",
    )

    def __init__(self, fn: Callable[..., Any]) -> None:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have no signature: accept anything
            sig = inspect.Signature([_P("args", _P.VAR_POSITIONAL), _P("kwargs", _P.VAR_KEYWORD)])
        self.signature = sig
        names: set[str] = set()
        required: set[str] = set()
        positional: list[str] = []
        self.varpos: str | None = None
        self.varkw = False
        for p in sig.parameters.values():
            if p.kind is _P.VAR_POSITIONAL:
                self.varpos = p.name
                names.add(p.name)
            elif p.kind is _P.VAR_KEYWORD:
                self.varkw = True
            else:
                names.add(p.name)
                if p.default is _P.empty:
                    required.add(p.name)
                if p.kind is _P.POSITIONAL_ONLY:
                    positional.append(p.name)
        # Positional-only parameters come first, so a *args parameter needs them passed
        # positionally as well; positional-or-keyword ones before *args must be positional too.
        if self.varpos is not None:
            positional = [
                p.name
                for p in sig.parameters.values()
                if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
            ]
        self.names = frozenset(names)
        self.required = frozenset(required)
        self.positional = tuple(positional)
        self.simple = not positional and self.varpos is None
        # Of a plain function: the names of its parameters that may be passed by position, in
        # order, read from its code (what it takes, whatever its signature says: a decorator's
        # wrapper of (*args, **kwargs) shows the signature of the function it wraps, and may
        # look its arguments up by name).
        code = fn.__code__ if type(fn) is types.FunctionType else None
        self.leading: tuple[str, ...] = (
            code.co_varnames[: code.co_argcount]
            if code is not None and not code.co_posonlyargcount
            else ()
        )

    def check(self, parameters: Mapping[str, Any], task_name: str) -> None:
        """Raise ``TypeError`` naming the task and the parameter when ``parameters`` cannot bind."""
        keys = parameters.keys()
        if self.varpos is None and keys == self.names:  # every parameter named: the common case
            return
        if not self.varkw and not keys <= self.names:
            unknown = keys - self.names
            if unknown:
                takes = ", ".join(map(repr, sorted(self.names))) or "none"
                raise TypeError(
                    f"task {task_name!r} got unexpected parameter(s) "
                    f"{', '.join(map(repr, sorted(unknown)))}; its parameters: {takes}"
                )
        if not self.required <= keys:
            missing = sorted(self.required - keys)
            raise TypeError(
                f"task {task_name!r} is missing required parameter(s) "
                f"{', '.join(map(repr, missing))}"
            )
        if self.varpos is not None and self.varpos in parameters:
            value = parameters[self.varpos]
            if not isinstance(value, (list, tuple)):
                raise TypeError(
                    f"task {task_name!r}: parameter {self.varpos!r} collects *args and must be "
                    f"a list or tuple, not {type(value).__name__}"
                )

    def call(self, fn: Callable[..., Any], parameters: dict[str, Any]) -> Any:
        if self.simple:
            return fn(**parameters)
        args, kwargs = self.split(parameters)
        return fn(*args, **kwargs)

    def split(self, parameters: dict[str, Any]) -> tuple[Sequence[Any], dict[str, Any]]:
        """The positional and keyword arguments of a call with ``parameters``."""
        if self.simple:
            return (), parameters
        kwargs = dict(parameters)
        args = [kwargs.pop(name) for name in self.positional if name in kwargs]
        if self.varpos is not None:
            args.extend(kwargs.pop(self.varpos, ()))
        return args, kwargs

    def bind(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], task_name: str
    ) -> dict[str, Any]:
        """Turn call-style arguments into a parameters dict (for ``task.submit(*args, **kw)``)."""
        if not args and self.varpos is None:
            return kwargs
        sig = self.signature
        try:
            bound = sig.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {task_name!r}: {exc}") from None
        parameters: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            if sig.parameters[name].kind is _P.VAR_KEYWORD:
                extra = value
            else:
                parameters[name] = value
        for name, value in extra.items():
            if name in self.names:
                # A parameters dict has one slot per name: it cannot hold both.
                raise TypeError(
                    f"task {task_name!r}: keyword argument {name!r} for **kwargs has the name "
                    f"of a positional-only or *args parameter; rename it"
                )
            parameters[name] = value
        return parameters
