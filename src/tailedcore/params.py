"""Parameter objects: small immutable strategies that own their parameters, scikit-learn style.

A ``Params`` subclass is a frozen dataclass: its fields are its parameters,
with the paper's defaults, and ``constraints`` says what each may hold. Nested
parameters read and change as in scikit-learn: ``get_params(deep=True)``
gives ``{"lof__k": 6, ...}`` and ``with_params(lof__k=3)`` returns a copy.
``to_config`` / ``from_config`` turn a tree of them into JSON and back, naming
only classes registered with ``@registered`` (a model file never names code
to run).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` between ``low`` and ``high`` (None: unbounded), ends included as ``closed`` says."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"
    none_ok: bool = False

    def problem(self, value) -> str | None:
        if value is None:
            return None if self.none_ok else "must be given"
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int):
            return f"must be {'a number' if self.kind is float else 'an integer'}"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be finite"
        low_ok = self.low is None or value > self.low or (value == self.low and self.closed in ("both", "left"))
        high_ok = self.high is None or value < self.high or (value == self.high and self.closed in ("both", "right"))
        if low_ok and high_ok:
            return None
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"must be in {left}{low}, {high}{right}" + (" or None" if self.none_ok else "")


@dataclass(frozen=True)
class OneOf:
    """One of ``options``; a switch (boolean options) takes booleans only, not 1 or 0."""

    options: tuple

    def problem(self, value) -> str | None:
        if all(isinstance(option, bool) for option in self.options):
            return None if isinstance(value, (bool, np.bool_)) else "must be True or False"
        return None if value in self.options else f"choose from {', '.join(map(str, self.options))}"


def check_values(owner: str, values: dict[str, Any], constraints: dict) -> None:
    """Raise ValueError naming ``owner.name`` for the first value its constraint refuses."""
    for name, constraint in constraints.items():
        problem = constraint.problem(values[name])
        if problem:
            raise ValueError(f"{owner}.{name}={values[name]!r}: {problem}")


def setting(default, help: str, *, option: str | None = "", flat: str | None = None, at: str = "fit",
            choices: dict[str, type[Params]] | None = None):
    """A parameter field with its command-line help (app/options.py makes the options from these).

    option: the option's name ("": ``--`` and the flat name with dashes; None:
    no option); flat: its flat keyword name when it differs from the field's;
    at: "fit" (the fit fixes it), "run" (a loaded model may change it) or
    "process" (a process-wide setting, given before or after any command);
    choices: for a field that holds a parameter object, the classes it may be
    by name (the option picks one, with its defaults).
    """
    return dataclasses.field(default=default, metadata={"help": help, "option": option, "flat": flat, "at": at,
                                                         "choices": choices})


REGISTRY: dict[str, type[Params]] = {}


def registered(cls: type[Params]) -> type[Params]:
    """Class decorator: ``cls`` may be named in a model file's config."""
    REGISTRY[cls.__name__] = cls
    return cls


@dataclass(frozen=True)
class Params:
    """Base of the parameter objects (see the module docstring)."""

    constraints: ClassVar[dict] = {}

    def check(self) -> None:
        """Validate every parameter, nested objects included (ValueError naming the parameter)."""
        check_values(type(self).__name__, self.get_params(deep=False), self.constraints)
        for value in self.get_params(deep=False).values():
            if isinstance(value, Params):
                value.check()

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        if deep:
            for name, value in list(params.items()):
                if isinstance(value, Params):
                    params.update({f"{name}__{key}": inner for key, inner in value.get_params(deep=True).items()})
        return params

    def with_params(self, **params) -> Params:
        """A copy with ``params`` changed; ``a__b=v`` changes parameter b of the nested object a."""
        direct, nested = {}, {}
        for key, value in params.items():
            name, _, rest = key.partition("__")
            if name not in {field.name for field in dataclasses.fields(self)}:
                raise ValueError(f"{type(self).__name__} has no parameter '{name}'")
            if rest:
                nested.setdefault(name, {})[rest] = value
            else:
                direct[name] = value
        for name, inner in nested.items():
            target = direct.get(name, getattr(self, name))
            if not isinstance(target, Params):
                raise ValueError(f"{type(self).__name__}.{name} has no nested parameters")
            direct[name] = target.with_params(**inner)
        return dataclasses.replace(self, **direct)

    def to_config(self) -> dict:
        """JSON-able {"type": class name, "params": {...}}, nested objects likewise."""
        params = {name: value.to_config() if isinstance(value, Params) else value
                  for name, value in self.get_params(deep=False).items()}
        return {"type": type(self).__name__, "params": params}

    @staticmethod
    def from_config(config: dict) -> Params:
        """Rebuild what ``to_config`` wrote; only registered classes (ValueError otherwise)."""
        if not isinstance(config, dict) or config.get("type") not in REGISTRY:
            raise ValueError(f"unknown parameter object {config.get('type') if isinstance(config, dict) else config!r}")
        params = {name: Params.from_config(value) if isinstance(value, dict) and "type" in value else value
                  for name, value in config.get("params", {}).items()}
        return REGISTRY[config["type"]](**params)
