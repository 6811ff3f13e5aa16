"""Prefect flows: train_flow.py (flow name "train-flow")."""
