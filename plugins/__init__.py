"""The built-in plugins of hjepa-kit, shipped as ``hjepa_kit.plugins``.

Each module is registered through the ``hjepa_kit`` entry-point group, exactly like a third-party
plugin. The core (``hjepa_kit``) never imports these modules.
"""
