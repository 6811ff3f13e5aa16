"""torch.nn.Module definitions (mlp.py, cnn.py, text.py) and build_model(config) (build.py). Imports neither prefect
nor mlflow, and not even torch until a model is built: `models.config` is read by the CLI's --help, which must stay
instant."""
_BUILD = ("build_model", "transfer", "save_network", "load_network", "network_from", "load_weights")


def __getattr__(name: str):
    if name in _BUILD:
        from models import build

        return getattr(build, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
