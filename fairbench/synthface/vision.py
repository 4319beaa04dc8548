"""synthclip's image tower: a small CNN as a transformers model (`synthface_cnn`), registered with the Auto classes.

transformers ships no plain CNN whose pooled output is a flat vector (ResNet's is N x C x 1 x 1, which
VisionTextDualEncoderModel's projection cannot take), and its ViT learns this world's small cues (hair
beside the jaw, the mouth) far too slowly on a CPU budget: a 4-layer ViT on 32 x 32 renders was at
chance on gender and expression after 400 supervised steps, where this CNN (the synthface classifier's
body) is near-perfect after 1,500. Registering it makes `AutoModel.from_pretrained` and
VisionTextDualEncoderModel load synthclip like any other dual encoder once fairbench is imported.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

MODEL_TYPE = "synthface_cnn"


class SynthFaceVisionConfig(PretrainedConfig):
    """Width of the CNN (its pooled output is 4 x width per body), number of parallel bodies, input size and
    channels."""

    model_type = MODEL_TYPE

    def __init__(self, width: int = 48, image_size: int = 32, num_channels: int = 3, n_bodies: int = 1,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.width, self.image_size, self.num_channels, self.n_bodies = width, image_size, num_channels, n_bodies
        self.hidden_size = 4 * width * n_bodies  # what VisionTextDualEncoderModel projects from


class SynthFaceVisionModel(PreTrainedModel):
    """Six conv-BN-ReLU layers (32 -> 4 px, the synthface classifier's body) and global average pooling;
    with n_bodies > 1, that many such bodies side by side, their pooled outputs concatenated (the
    classifier's two bodies: attributes and expression)."""

    config_class = SynthFaceVisionConfig
    main_input_name = "pixel_values"
    base_model_prefix = "synthface_cnn"

    def __init__(self, config: SynthFaceVisionConfig) -> None:
        super().__init__(config)
        from fairbench.synthface.classifier import _body

        self.body = _body(config.width)
        self.extra_bodies = nn.ModuleList(_body(config.width) for _ in range(config.n_bodies - 1))
        self.post_init()

    def bodies(self) -> list[nn.Module]:
        """The parallel CNN bodies, in the order their outputs are concatenated."""
        return [self.body, *self.extra_bodies]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True, **_) -> BaseModelOutputWithPooling:
        pooled = torch.cat([b(pixel_values) for b in self.bodies()], dim=1)
        return BaseModelOutputWithPooling(last_hidden_state=pooled[:, None, :], pooler_output=pooled)


AutoConfig.register(MODEL_TYPE, SynthFaceVisionConfig, exist_ok=True)
AutoModel.register(SynthFaceVisionConfig, SynthFaceVisionModel, exist_ok=True)
