"""Command-line options made from the parameter classes, so a new setting is one field in one place.

Every field that carries an option (params.setting) of the detector's own
parameters and settings (settings.py: the seed, features, search, calibration,
run) and of the policies and their building blocks (policies.py, tail.py)
becomes one option: its name, type, choices, default and help come from the
field, its constraint and its class. A field that holds one of several
parameter classes (the tail estimator) is an option naming the class; a
process-wide setting (--threads) is a global option. Given values become nested parameters
(``features__crop``, ``policy__lof__k``), and an option that does not apply to
a method or tail estimator is refused by the rule that refuses the parameter in
Python (``Params.with_params``).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from ..methods import METHODS
from ..params import Interval, OneOf, Params
from ..policies import POLICIES
from ..settings import SETTINGS, TopLevel


@dataclass(frozen=True)
class Option:
    """One option: ``flag`` sets the nested parameter ``target`` (a field of ``owner``)."""

    flag: str
    target: str
    owner: type[Params]
    field: dataclasses.Field
    applies: str = ""  # which methods / estimators have it, for the help
    stated_default: str | None = None  # the default to state when it is not the field's (one per method)

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def at(self) -> str:
        """"fit": the fit fixes it; "run": a loaded model may change it."""
        return self.field.metadata.get("at", "fit")

    @property
    def default(self):
        return self.field.default

    @property
    def is_mapping(self) -> bool:
        """A dict field: given as repeated KEY=VALUE."""
        return "dict" in str(self.field.type)

    @property
    def choices(self) -> dict[str, type[Params]] | None:
        """For a field that holds a parameter object: its classes by name (the option names one)."""
        return self.field.metadata.get("choices")

    def problem(self, value) -> str | None:
        """What the field's constraint says of ``value`` (None: acceptable)."""
        constraint = self.owner.constraints.get(self.field.name)
        return constraint.problem(value) if constraint else None

    def value(self, given):
        """The parameter's value of what was given on the command line."""
        return dict(given) if self.is_mapping else self.choices[given]() if self.choices else given

    def add_to(self, parser, model_default: bool = False, default_text: str | None = None,
               absent: bool = True) -> None:
        """Add the option; ``absent``: its value is absent from the namespace unless given (else the field's
        default). ``model_default``: a command on a fitted model, whose own value is the default;
        ``default_text``: the default to state instead."""
        constraint = self.owner.constraints.get(self.field.name)
        kwargs: dict = {"default": argparse.SUPPRESS if absent else self.default}
        if self.choices:
            kwargs["choices"] = tuple(self.choices)
        elif isinstance(self.default, bool):
            kwargs.update(type=_boolean, metavar="{true,false}")
        elif isinstance(self.default, tuple):  # of integers (the backbone's stages)
            kwargs.update(type=int, nargs="+", metavar="VALUE")
        elif self.is_mapping:
            kwargs.update(action="append", metavar="KEY=VALUE", type=_key_value)
        elif isinstance(constraint, OneOf) and all(isinstance(o, str) for o in constraint.options):
            kwargs.update(choices=constraint.options)
        elif isinstance(constraint, Interval):
            kwargs["type"] = _or_none(constraint.kind) if constraint.none_ok else constraint.kind
        default = default_text or self.stated_default or (
            "the model's" if model_default else "none" if self.default is None else
            " ".join(map(str, self.default)) if isinstance(self.default, tuple) else
            self.default.name if self.choices else self.default)
        text = self.field.metadata["help"].replace("%", "%%") + self.applies
        parser.add_argument(self.flag, help=text if "default" in text else f"{text}; default {default}", **kwargs)


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")
    return text.lower() == "true"


def _or_none(kind: type):
    def parse(text: str):
        if text.lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} or none, "
                                             f"got '{text}'") from None
    parse.__name__ = kind.__name__
    return parse


def _key_value(text: str) -> tuple[str, int]:
    key, _, value = text.partition("=")
    if not key or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected KEY=INTEGER, e.g. nprobe=16, got '{text}'")
    return key, int(value)


def _has_option(field: dataclasses.Field) -> bool:
    return "help" in field.metadata and field.metadata["option"] is not None


def _flag(field: dataclasses.Field, stem: str) -> str:
    return field.metadata["option"] or "--" + stem.replace("_", "-")


def setting_options() -> list[Option]:
    """The options of the detector's own parameters (TopLevel) and settings, in the order of their fields."""
    return [Option(_flag(field, field.metadata["flat"] or field.name),
                   f"{group}__{field.name}" if group else field.name, cls, field)
            for group, cls in {"": TopLevel, **SETTINGS}.items() for field in dataclasses.fields(cls)
            if _has_option(field)]


def policy_options() -> list[Option]:
    """The options of the policies' building blocks: a block that may be one of several classes (the tail
    estimator) has an option that picks the class, then the fields of each class; a policy's own plain
    parameter has an option of its own. The help says which methods, and which classes when not all, have
    each."""
    blocks: dict[str, tuple[type[Params], dataclasses.Field, list[str]]] = {}
    block_defaults: dict[str, dict[str, Params]] = {}  # block -> method -> the policy's default block
    for method, policy in POLICIES.items():
        for field in dataclasses.fields(policy):
            blocks.setdefault(field.name, (policy, field, []))[2].append(method)
            block_defaults.setdefault(field.name, {})[method] = field.default
    options: dict[str, Option] = {}
    for block, (policy, block_field, methods) in blocks.items():
        classes = block_field.metadata.get("choices") or (
            {"": type(block_field.default)} if isinstance(block_field.default, Params) else {})  # else a plain value
        picker = _flag(block_field, block) if _has_option(block_field) else ""
        if picker:
            options[picker] = Option(picker, f"policy__{block}", policy, block_field, f" ({', '.join(methods)})")
        for cls in classes.values():
            for field in filter(_has_option, dataclasses.fields(cls)):
                flag = _flag(field, f"{block}_{field.name}")
                if flag in options:
                    continue
                owners = [name for name, other in classes.items()
                          if field.name in {f.name for f in dataclasses.fields(other)}]
                which = f", with {picker} {' or '.join(owners)}" if len(owners) < len(classes) else ""
                options[flag] = Option(flag, f"policy__{block}__{field.name}", cls, field,
                                       f" ({', '.join(methods)}{which})",
                                       _per_method_default(block_defaults[block], field.name))
    return list(options.values())


def _per_method_default(defaults: dict[str, Params], name: str) -> str | None:
    """"global (softpatch), product (tailedcore)" when the methods' default blocks differ in field ``name``;
    None when they agree (the field's own default is stated)."""
    values = {method: getattr(block, name) for method, block in defaults.items() if hasattr(block, name)}
    if len(set(values.values())) < 2:
        return None
    return ", ".join(f"{value} ({method})" for method, value in values.items())


SETTING_OPTIONS = setting_options()
POLICY_OPTIONS = policy_options()
PROCESS_OPTIONS = [option for option in SETTING_OPTIONS if option.at == "process"]


def add_policy_options(parser) -> None:
    for option in POLICY_OPTIONS:
        option.add_to(parser)


def add_setting_options(parser, at: tuple[str, ...] = ("fit", "run"), model_default: bool = False,
                        skip: tuple[str, ...] = (), defaults: dict[str, str] | None = None) -> None:
    """The settings' options fixed ``at`` fit or run time (but those in ``skip``); ``defaults``: the default
    to state of some options (by flag), where a command has its own. The run settings are never the model's:
    they keep their own defaults."""
    for option in SETTING_OPTIONS:
        if option.at in at and option.flag not in skip:
            option.add_to(parser, model_default and not option.target.startswith("run__"),
                          (defaults or {}).get(option.flag))


def given(args: argparse.Namespace, options: list[Option]) -> dict[str, object]:
    """{nested parameter: value} of the ``options`` given on the command line."""
    values = {}
    for option in options:
        if option.dest in vars(args):
            values[option.target] = option.value(getattr(args, option.dest))
    return values


def policy_params(args: argparse.Namespace, method: str) -> tuple[dict, dict[str, str]]:
    """Nested policy parameters of the given policy options for ``method``, and the options that do not
    apply to it, each with the reason ``Params.with_params`` refuses its parameter (as in Python)."""
    policy = METHODS[method].default_policy()
    params, refused = {}, {}
    candidates = [(option.flag, option.target, option.value(getattr(args, option.dest)))
                  for option in POLICY_OPTIONS if option.dest in vars(args)]
    for flag, target, value in candidates:
        nested = {**params, target: value}
        try:
            policy.with_params(**{key.removeprefix("policy__"): item for key, item in nested.items()})
        except ValueError as error:
            refused[flag] = str(error)
            continue
        params[target] = value
    return params, refused
