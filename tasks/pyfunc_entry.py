"""The code of the registered raw-input model (MLflow's models-from-code): tasks/export.py logs this file as the
model's `python_model`, MLflow keeps a copy in the model and runs it when the model is loaded
(mlflow.pyfunc.load_model, mlflow models serve). The class it sets is tasks/pyfunc_model.py's, from the installed
torchyard package, like the Predictor that class runs."""
from mlflow.models import set_model

try:
    from tasks.pyfunc_model import RawInputModel
except ImportError as exc:
    raise ImportError("this MLflow model runs torchyard's Predictor: load it with Python where the torchyard package "
                      f"is installed (pip install -e <torchyard checkout>): {exc}") from exc

set_model(RawInputModel())
