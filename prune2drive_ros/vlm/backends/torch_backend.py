"""The reference vision backend: the ``VisionEncoder`` module run by PyTorch, optionally compiled."""

from __future__ import annotations

import torch


class TorchVisionBackend:
    name = "torch"

    def __init__(self, encoder: torch.nn.Module, *, compile: bool):
        """``compile``: torch.compile the whole encoder (``bench vision`` compares it); the runner's ``compile``
        setting instead compiles the encoder's layers (``VisionEncoder.compile_layers``)."""
        self.encoder = encoder
        self._run = torch.compile(encoder, dynamic=False) if compile else encoder
        self.reason = ""

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._run(pixels)

    def close(self) -> None:
        self._run = None
