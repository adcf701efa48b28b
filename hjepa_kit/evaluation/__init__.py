"""Evaluation: frozen features, metrics, the report, export and embedding of trained models."""
