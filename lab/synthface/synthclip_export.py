"""synthclip's shipped form: the trained tensors rounded to float16 and written beside its config.

The package reads this form back (fairbench/synthface/synthclip.py `load_shipped`, `assemble`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fairbench.synthface.synthclip import DELTA, frozen_prefixes, build_processor, trained_names


def freeze_untrained(model) -> None:
    """requires_grad only on the trained parameters."""
    frozen = frozen_prefixes(model)
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith(frozen))


def _shipped(t: torch.Tensor) -> torch.Tensor:
    return t.half() if t.is_floating_point() else t  # counters (num_batches_tracked) keep their type


def round_to_shipped(model) -> None:
    """Round the trained tensors to float16 precision in place, so the model equals what ships."""
    with torch.no_grad():
        state = model.state_dict()
        for n in trained_names(model):
            state[n].copy_(_shipped(state[n]).to(state[n].dtype))


def export(model, dest: Path) -> Path:
    """Write the shipped form of a trained model into `dest`: trained tensors (float16), config, processor."""
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    save_file({n: _shipped(state[n].detach()).contiguous() for n in trained_names(model)}, str(dest / DELTA))
    for config in (model.config, model.config.text_config, model.config.vision_config):
        config.name_or_path = ""  # where this machine loaded MiniLM from: not part of the model
    model.config.save_pretrained(dest)
    build_processor().save_pretrained(dest)
    return dest
