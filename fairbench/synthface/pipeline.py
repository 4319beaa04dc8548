"""SynthFacePipeline: a diffusers pipeline with SD's interface over synthface's small pixel-space model.

Frozen text-encoder token states (24 x 384: all-MiniLM-L6-v2 in the text-only world, synthclip's
text tower in the vision-language world) -> UNet2DConditionModel cross-attention -> 32 x 32 RGB.
No VAE (vae_scale_factor 1). encode_prompt / prompt_embeds / guidance_scale / generator lists
behave as in StableDiffusionPipeline, so every method level (prompt text, conditioning
embeddings, guidance, cross-attention weights) applies exactly as on SD.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from fairbench.synthface.text import MAX_TOKENS, encode_texts, load_text_encoder, token_states

ASSETS = Path(__file__).resolve().parent / "assets"  # the text-only world (and the shared classifier)
VL_ASSETS = Path(__file__).resolve().parent / "assets_vl"  # the vision-language world's denoiser


def world_assets(name: str) -> Path:
    """Pipeline folder of an embedded world: "synthface" (text-only) or "synthface-vl" (vision-language)."""
    return {"synthface": ASSETS, "synthface-vl": VL_ASSETS}[name]


def make_unet(sample_size: int = 32, transformer_layers: int = 1) -> UNet2DConditionModel:
    """The synthface denoiser: cross-attention at 8 x 8 only, `transformer_layers` blocks per attention
    (1: 2.7 M parameters; 3: 4.6 M). Trains on a CPU."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=384,
        norm_num_groups=8,
        attention_head_dim=8,
        transformer_layers_per_block=(1, 1, transformer_layers),
    )


class SynthFacePipeline(DiffusionPipeline):
    """Text-to-image pipeline of the synthface world (pixel space, 32 x 32)."""

    model_cpu_offload_seq = "text_encoder->unet"
    clip_model = "synthclip"  # the CLIP trained on the worlds' images (fairbench.methods.base.own_clip)

    def __init__(self, unet: UNet2DConditionModel, scheduler: Any, text_encoder: Any, tokenizer: Any) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self.vae_scale_factor = 1
        self.safety_checker = None

    # What a method may ask of an embedded world (found by capability, never by class name) ----------------
    def text_states(self, texts: list[str]) -> torch.Tensor:
        """Token states with autograd through the text encoder (encode_prompt runs without it)."""
        return token_states(texts, self.text_encoder, self.tokenizer)

    @staticmethod
    def reference_images(attribute: str, per_group: int, seed: int) -> tuple[list[list[Any]], str]:
        """Renders of each group of `attribute` (PIL images, every other attribute uniform), and a tag naming them:
        the reference images of a method that learns from pictures of each group."""
        from PIL import Image

        from fairbench.synthface.population import group_renders

        groups = group_renders(attribute, per_group, seed)
        return [[Image.fromarray(a) for a in g] for g in groups], f"synthface-renders:{seed}:{per_group}"

    @property
    def fixed_size(self) -> int:
        """The one image side it draws (the backend refuses any other --height / --width)."""
        return int(self.unet.config.sample_size)

    @classmethod
    def from_folder(cls, folder: str | Path = ASSETS, dtype: torch.dtype = torch.float32) -> "SynthFacePipeline":
        """Load the UNet and scheduler from `folder`, the text encoder its model_index.json names (offline)."""
        import json

        from diffusers import DPMSolverMultistepScheduler

        folder = Path(folder)
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype)
        scheduler = DPMSolverMultistepScheduler.from_pretrained(folder / "scheduler")
        index = json.loads((folder / "model_index.json").read_text())
        text_encoder, tokenizer = load_text_encoder(text_encoder_of(index))
        return cls(unet=unet, scheduler=scheduler, text_encoder=text_encoder.to(dtype), tokenizer=tokenizer)

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str], device: Any = None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt: str | list[str] | None = None,
                      **_: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt_embeds, negative_prompt_embeds), each (B, 24, 384), as StableDiffusionPipeline returns."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        pe = encode_texts(prompts, self.text_encoder, self.tokenizer).repeat_interleave(num_images_per_prompt, 0)
        ne = None
        if do_classifier_free_guidance:
            neg = negative_prompt if negative_prompt is not None else ""
            negs = [neg] * len(prompts) if isinstance(neg, str) else list(neg)
            ne = encode_texts(negs, self.text_encoder, self.tokenizer).repeat_interleave(num_images_per_prompt, 0)
        return pe.to(device or self.device), None if ne is None else ne.to(device or self.device)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, num_inference_steps: int = 15,
                 guidance_scale: float = 2.0, height: int | None = None, width: int | None = None,
                 negative_prompt: str | list[str] | None = None, generator: Any = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, **_: Any) -> ImagePipelineOutput | tuple:
        """Sample images; steps mirror StableDiffusionPipeline.__call__ (minus the VAE)."""
        # 1. inputs
        size = self.unet.config.sample_size
        if (height or size) != size or (width or size) != size:
            raise ValueError(f"synthface generates {size} x {size} images; got height={height}, width={width}")
        do_cfg = guidance_scale > 1.0
        # 2. encode prompt
        if prompt_embeds is None:
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompt, self.device, 1, do_cfg, negative_prompt)
        elif do_cfg and negative_prompt_embeds is None:
            _, negative_prompt_embeds = self.encode_prompt([""] * len(prompt_embeds), self.device, 1, True)
        batch = prompt_embeds.shape[0]
        cond = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds
        cond = cond.to(self.unet.dtype)
        # 3. timesteps and initial noise (one generator per image, drawn on the CPU)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        x = randn_tensor((batch, 3, size, size), generator=generator, device=self.device, dtype=self.unet.dtype)
        x = x * self.scheduler.init_noise_sigma
        # 4. denoising loop
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = self.scheduler.scale_model_input(torch.cat([x, x]) if do_cfg else x, t)
            out = self.unet(inp, t, encoder_hidden_states=cond).sample
            if do_cfg:
                uncond, text = out.chunk(2)
                out = uncond + guidance_scale * (text - uncond)
            x = self.scheduler.step(out, t, x).prev_sample
        # 5. post-process
        images = ((x.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "pil":
            images = self.numpy_to_pil(images)
        elif output_type != "np":
            raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}")
        if not return_dict:
            return (images,)
        out = ImagePipelineOutput(images=images)
        out.nsfw_content_detected = None
        return out


def text_encoder_of(model_index: dict) -> str:
    """The text encoder a synthface model folder was trained on (folders older than the key: MiniLM)."""
    from fairbench.synthface.text import TEXT_ENCODERS

    name = model_index.get("fairbench_text_encoder", "minilm")
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown synthface text encoder {name!r}; one of {TEXT_ENCODERS}")
    return name


def make_scheduler(prediction_type: str = "v_prediction"):
    """Training noise schedule (cosine, v-prediction) and the default sampler built from it."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                          clip_sample=True)
    sampler = DPMSolverMultistepScheduler.from_config(train.config, algorithm_type="dpmsolver++", solver_order=2,
                                                      thresholding=False)
    return train, sampler


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float NCHW -> uint8 NHWC."""
    return ((np.clip(images, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)


__all__ = ["ASSETS", "MAX_TOKENS", "VL_ASSETS", "world_assets", "SynthFacePipeline", "make_scheduler", "make_unet", "to_uint8"]
