"""The vision path as one module: pixels of the six views -> visual embeddings for the LLM.

``VisionEncoder`` is what every backend runs (torch eagerly, or exported to ONNX / TensorRT):
SigLIP up to the configured feature layer (DriveMM: the last of its 26 layers, before the
post-layernorm), the 2-layer GELU projector, and the ``image_newline`` embedding appended to each
view. Output: ``[V, 729 + 1, hidden]``. ``compile_layers`` has the torch backend run each SigLIP layer
through one compiled function (the layer's parameters are its inputs, so 26 layers share one compile).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _unwrap(output):
    return output[0] if isinstance(output, tuple) else output


def _run_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return _unwrap(layer(hidden, None))


class VisionEncoder(nn.Module):
    def __init__(self, llava_model: nn.Module):
        super().__init__()
        inner = llava_model.model
        config = llava_model.config
        # transformers 5 flattens SiglipVisionModel; 4.x wraps it in .vision_model
        self.vision_model = getattr(inner.vision_tower, "vision_model", inner.vision_tower)
        self.projector = inner.multi_modal_projector
        self.image_newline = inner.image_newline
        layer = config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError("multi-layer vision features are not supported (DriveMM uses one layer)")
        num_layers = len(self.vision_model.encoder.layers)
        # hidden_states[i] is the output after i layers; negative indices count from the last one.
        self.num_layers_run = layer if layer >= 0 else num_layers + 1 + layer
        self.drop_cls = config.vision_feature_select_strategy == "default"
        self.run_layer: Callable[[nn.Module, torch.Tensor], torch.Tensor] = _run_layer

    def compile_layers(self, wrap: Callable[[Callable, str], Callable]) -> None:
        """Run the encoder layers through ``wrap(fn, name)`` (``graphs.Compiler``); not for ONNX export."""
        self.run_layer = wrap(_run_layer, "vision layer", fullgraph=False)  # transformers' code may break the graph

    @property
    def hidden_size(self) -> int:
        return self.image_newline.shape[-1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_model.embeddings(pixel_values)
        for layer in self.vision_model.encoder.layers[: self.num_layers_run]:
            hidden = self.run_layer(layer, hidden)
        if self.drop_cls:
            hidden = hidden[:, 1:]
        features = self.projector(hidden)
        newline = self.image_newline.to(features.dtype).expand(features.shape[0], 1, -1)
        return torch.cat([features, newline], dim=1)
