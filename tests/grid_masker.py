"""A masker plugin's factory as an author writes it: it refuses blocks that cannot fit the encoder's grid.

Registered in-process by the tests of build-time checks (``check_build``, ``hjepa config validate``).
"""

from __future__ import annotations

import attrs

from hjepa_kit.errors import ConfigError
from hjepa_kit.params import param


@attrs.frozen(kw_only=True)
class BlockParams:
    """Parameters of a block masker."""

    num_targets: int = param(4, help="Target blocks.", ge=1)
    target_len: int = param(4, help="Patches per target block.", ge=1)
    min_context: int = param(4, help="Fewest context patches.", ge=1)


def build_blocks(params, ctx):
    """A masker whose blocks must fit the encoder's grid (it is never called): no file, no key path in its error."""
    rows, cols = ctx.grid_size
    targets = params.num_targets * params.target_len
    if targets + params.min_context > rows * cols:
        raise ConfigError(f"{targets} target + {params.min_context} context patches cannot fit a {rows}x{cols} patch grid")
    return lambda batch_size, generator: None
