"""The transform that applies a fitted preprocessing state, chosen by the state's data type."""
from preprocessing.image import ImageTransform
from preprocessing.tabular import TabularTransform
from preprocessing.text import TextTransform

TRANSFORMS = {"tabular": TabularTransform, "image": ImageTransform, "text": TextTransform}


def transform_for(state: dict) -> TabularTransform | ImageTransform | TextTransform:
    return TRANSFORMS[state.get("data_type", "tabular")](state)
