"""One Prefect task per pipeline step: thin wrappers that call the core, log to MLflow and return paths."""
