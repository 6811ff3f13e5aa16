"""One module per data type, registered here. Every step that depends on the data type asks the kind instead of
branching on it: the tasks (collect, validate, preprocess, baseline, train), predict.py, serving and promotion.

A kind (base.Kind) answers: the transform for a fitted state, the model's input size, the batch sources of a
prepared split, how a table of rows or files becomes predictions, and the inputs of its baseline. Modules are
imported on first use, so a tabular run never imports the image or text stack.

To add a data type: one module here with a `KIND` object (a base.Kind subclass), one line in _MODULES, its tests.
"""
import importlib

from preprocessing.errors import DataError
from preprocessing.kinds.base import Kind

_MODULES = {"tabular": "preprocessing.kinds.table", "image": "preprocessing.kinds.image",
            "text": "preprocessing.kinds.text"}
DATA_TYPES = tuple(_MODULES)


def get(data_type: str) -> Kind:
    if data_type not in _MODULES:
        raise DataError(f"unknown data type '{data_type}'; expected one of {', '.join(DATA_TYPES)}")
    return importlib.import_module(_MODULES[data_type]).KIND


def transform_for(state: dict):
    """The transform that applies a fitted preprocessing state, chosen by the state's data type."""
    return get(state.get("data_type", "tabular")).transform(state)


def of(transform) -> Kind:
    """The kind a transform belongs to (every transform keeps its fitted state)."""
    return get(transform.state.get("data_type", "tabular"))


__all__ = ["DATA_TYPES", "Kind", "get", "of", "transform_for"]
