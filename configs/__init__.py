"""Bundled run configurations (shipped as ``hjepa_kit.configs``)."""
