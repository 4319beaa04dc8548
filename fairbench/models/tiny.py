"""`fairbench make-tiny-sd`: tiny randomly initialised text-to-image pipelines (SD 1.x, SD 2.x, SDXL, SD3).

Shapes follow diffusers' own pipeline tests (get_dummy_components). The tokenizer is a real
CLIP byte-level BPE tokenizer with a character-only vocabulary built in memory, so the folder
needs nothing from the network. The images are noise: the pipeline exists to exercise every
code path (loading, encoding, prompt_embeds, guidance, cross-attention edits) in seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _byte_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet, each symbol alone and as a word end, plus the specials."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    return vocab


def tiny_tokenizer(max_length: int = 77):
    """A character-level CLIPTokenizer (no merges): real CLIP pre-tokenisation, tiny vocabulary."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_byte_vocab(), merges=[], model_max_length=max_length)


ARCHITECTURES = ("sd1", "sd2", "sdxl", "sd3")


def _text_config(vocab_size: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                          layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size,
                          max_position_embeddings=77, **extra)


def _vae(**extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), **extra)


def _unet(sample_size: int, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=sample_size, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=2, **extra)


def build_tiny_pipeline(arch: str = "sd1", seed: int = 0, sample_size: int = 16):
    """A tiny random pipeline of one architecture, with the shapes of diffusers' own tests:

    - sd1: one CLIP text encoder (77 x 32 token states), epsilon prediction, DDIM;
    - sd2: SD 2.x's differences: gelu text encoder, linear attention projections, v-prediction;
    - sdxl: two text encoders whose token states are concatenated (77 x 64), a pooled embedding
      (text_encoder_2's projection) and add_time_ids;
    - sd3: a transformer denoiser (no UNet) on two CLIP encoders, without the optional T5.
    """
    import diffusers
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}")
    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if arch in ("sd1", "sd2"):
        v2 = arch == "sd2"
        unet = _unet(sample_size, cross_attention_dim=32,
                     **({"attention_head_dim": (2, 4), "use_linear_projection": True} if v2 else {}))
        scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                            prediction_type="v_prediction" if v2 else "epsilon")
        torch.manual_seed(seed)
        vae = _vae()
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(_text_config(vocab, **({"hidden_act": "gelu", "projection_dim": 32} if v2 else {})))
        return diffusers.StableDiffusionPipeline(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                                 tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                                                 image_encoder=None, requires_safety_checker=False)
    if arch == "sdxl":
        unet = _unet(sample_size, cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True,
                     addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                     projection_class_embeddings_input_dim=32 + 6 * 8)  # pooled (32) + 6 time ids x 8
        scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                     steps_offset=1, timestep_spacing="leading")
        torch.manual_seed(seed)
        vae = _vae(sample_size=sample_size * 2)
        torch.manual_seed(seed)
        te1 = CLIPTextModel(_text_config(vocab, hidden_act="gelu", projection_dim=32))
        te2 = CLIPTextModelWithProjection(_text_config(vocab, hidden_act="gelu", projection_dim=32))
        return diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer,
                                                   tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                                   force_zeros_for_empty_prompt=False, add_watermarker=False)
    transformer = diffusers.SD3Transformer2DModel(sample_size=sample_size, patch_size=1, in_channels=4, num_layers=1,
                                                  attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                                  joint_attention_dim=64, pooled_projection_dim=64, out_channels=4)
    torch.manual_seed(seed)
    vae = _vae(sample_size=sample_size * 2, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
               scaling_factor=1.5035)
    torch.manual_seed(seed)
    te1 = CLIPTextModelWithProjection(_text_config(vocab, hidden_act="gelu", projection_dim=32))
    te2 = CLIPTextModelWithProjection(_text_config(vocab, hidden_act="gelu", projection_dim=32))
    return diffusers.StableDiffusion3Pipeline(transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
                                              vae=vae, text_encoder=te1, tokenizer=tokenizer, text_encoder_2=te2,
                                              tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)


def make_tiny_sd(out_dir: str | Path, seed: int = 0, sample_size: int = 16, arch: str = "sd1"):
    """Build a tiny random pipeline of `arch` and save it to `out_dir` (safetensors); return the pipeline."""
    from diffusers.utils import logging as diffusers_logging

    pipe = build_tiny_pipeline(arch, seed, sample_size)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.ERROR)  # "text_encoder_3=None cannot be saved": by design
    try:
        pipe.save_pretrained(Path(out_dir), safe_serialization=True)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return pipe
