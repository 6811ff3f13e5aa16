"""Pure data transforms by type. Imports neither prefect nor mlflow."""
