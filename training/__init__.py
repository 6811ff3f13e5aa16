"""Trainer loop, callbacks, optimizer/scheduler factories, evaluation. Imports neither prefect nor mlflow."""
