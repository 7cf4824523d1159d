"""Differences between the transformers 5.x releases the runtime calls into, detected once at load time.

The decoder layers take the KV cache as ``past_key_values`` up to 5.23 and as ``cache`` from 5.24
(5.24-5.39 still accept the old name). Passing the wrong one is silent: the layer sees no cache and
the first cache read fails far away. So the name is read from the layer's own signature.
"""

from __future__ import annotations

import inspect

from torch import nn

CACHE_KEYWORDS = ("cache", "past_key_values")


def cache_keyword(layer: nn.Module) -> str:
    """The keyword ``layer.forward`` takes the KV cache under (``cache`` or ``past_key_values``)."""
    parameters = inspect.signature(type(layer).forward).parameters
    for name in CACHE_KEYWORDS:
        if name in parameters:
            return name
    raise TypeError(f"{type(layer).__name__}.forward takes neither of {CACHE_KEYWORDS}; this transformers "
                    "release is not supported")
