"""train.py's flags, generated from the config sections' pydantic fields (flows/sections.py): name, type, help text
and choices come from the field, so a setting is declared once. Every setting is `--<section>.<field>` (nested:
`--train.scheduler.gamma`); a field whose name no other section uses also answers to `--<field>` (`--n_epochs`,
`--min_freq`), and ALIASES keeps the seed's historic names for the rest (`--data`, `--scheduler`, `--patience`).
A flag that is not given leaves the config file's value or the default alone. Imports no torch, pandas or Prefect.
"""
import argparse
import types
import typing
from collections import Counter

import yaml
from pydantic import BaseModel

from flows.sections import SECTIONS

# short name -> setting, where the field's own name is taken twice or says too little
ALIASES = {
    "data": "data.source", "model_type": "model.type", "scheduler": "train.scheduler.name",
    "patience": "train.early_stopping.patience",
}
# field names too vague to stand alone (they keep their dotted flag)
NOT_SHORT = {"source", "type", "name", "train", "val", "test", "enabled", "mode", "metric", "mean", "std", "factor",
             "gamma", "normalize"}


def settings() -> list[tuple[str, object]]:
    """(dotted setting, pydantic FieldInfo) for every leaf field of every section, in the sections' order."""
    found = []

    def walk(prefix: str, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                walk(f"{prefix}{name}.", field.annotation)
            else:
                found.append((f"{prefix}{name}", field))

    for section, (model, _) in SECTIONS.items():
        walk(f"{section}.", model)
    return found


def short_names(paths: list[str]) -> dict[str, str]:
    """short flag -> dotted setting: ALIASES, then every field name that only one setting has."""
    names = [path.rsplit(".", 1)[-1] for path in paths]
    counts = Counter(names)
    return {**ALIASES, **{name: path for name, path in zip(names, paths)
                          if counts[name] == 1 and name not in NOT_SHORT and name not in ALIASES}}


def _scalar(value: str):
    """A flag's text as YAML (numbers, lists, mappings, true/false); pydantic then checks it against the field."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _parts(annotation) -> list:
    """The annotation's alternatives without None: `int | None` -> [int]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _argument(field) -> dict:
    """add_argument keywords for a field: bool -> --x / --no-x, one plain type -> that type, Literal -> its
    values in the help (pydantic checks them, so the aliases its validators accept still work), anything else
    (lists, mappings, 'float or auto') -> YAML text."""
    parts = _parts(field.annotation)
    default = field.get_default(call_default_factory=True)
    described = (field.description or "").rstrip(".")
    shown = f"default {default}" if default is not None and default != [] else ""
    keywords = {"help": "; ".join(x for x in (described, shown) if x).replace("%", "%%") or None}
    if parts == [bool]:
        return {**keywords, "action": argparse.BooleanOptionalAction}
    if len(parts) == 1 and typing.get_origin(parts[0]) is typing.Literal:
        values = typing.get_args(parts[0])
        return {**keywords, "type": type(values[0]), "metavar": "{" + ",".join(map(str, values)) + "}"}
    if len(parts) == 1 and parts[0] in (int, float, str):
        return {**keywords, "type": parts[0], "metavar": {int: "N", float: "X", str: "TEXT"}[parts[0]]}
    return {**keywords, "type": _scalar, "metavar": "YAML"}


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One argument group per section; each setting's value lands in the namespace under its dotted name."""
    fields = settings()
    short = {path: name for name, path in short_names([path for path, _ in fields]).items()}
    groups = {section: parser.add_argument_group(section, description)
              for section, (_, description) in SECTIONS.items()}
    for path, field in fields:
        names = [f"--{path}"] + ([f"--{short[path]}"] if path in short else [])
        groups[path.split(".")[0]].add_argument(*names, dest=path, default=None, **_argument(field))


def given(args: argparse.Namespace) -> dict:
    """The settings given as flags, nested by section: {'train': {'scheduler': {'name': 'StepLR'}}}."""
    values = {}
    for path, value in vars(args).items():
        if "." not in path or value is None:
            continue
        *sections, field = path.split(".")
        node = values
        for key in sections:
            node = node.setdefault(key, {})
        node[field] = value
    return values


def merge(base: dict, flags: dict) -> dict:
    """`base` (a config file's sections) with `flags` laid over it, section by section."""
    merged = dict(base)
    for key, value in flags.items():
        merged[key] = merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged
