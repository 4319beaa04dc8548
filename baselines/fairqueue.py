"""`fairqueue`: ITI-GEN's tokens with prompt queuing and attention amplification (guidance level).

Source: Teo, Abdollahzadeh, Ma, Cheung, "FairQueue: Rethinking Prompt Learning for Fair
Text-to-Image Generation", NeurIPS 2024 (code: Bearwithchris/FairQueue_Code, generation_mixing.py
and Analysis_Code/pipeline_stable_diffusion.py). ITI-GEN's learned tokens, used from the first step,
distort the early steps that lay out the image's global structure. As published:
  queuing      the base prompt (the user's prompt, no tokens) conditions the first denoising steps
               and ITI-GEN's inclusive prompt the rest ("H2I": `if i < step_start_switch` use the
               base prompt's embeddings);
  amplifying   the cross-attention to the inclusive tokens is scaled by c = 10 (`--aa 10`) while the
               inclusive prompt conditions;
  tokens       ITI-GEN's, unchanged (no new training): the same arguments give the same cached tokens.

Unpublished details or choices here, each a parameter with its default:
  - `queue` 0.2: the share of steps on the base prompt. generation_mixing.py's default transition
    `--ts 40` is an index of its DDIM sampler, which counts down from 49 over 50 steps, so the
    first 10 of 50 steps use the base prompt;
  - `amplify` 10 multiplies the softmax-normalised attention of each inclusive token's column, with
    no renormalisation (prompt-to-prompt's reweighting, which the paper's wording follows); the
    sampler that applies it is not in the public repository. The published default `--st 9` names
    one column of "A headshot of a person"; here every inclusive token's column is amplified
    (`amplify_tokens` "all"; "last" keeps only the last one);
  - the unconditional half of classifier-free guidance holds no inclusive token and is not amplified.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

from fairbench.baselines.itigen import (BASE_PROMPT, EPOCHS, LAMBDA, LR, REFERENCE_PER_GROUP, STEPS_PER_EPOCH,
                             TOKEN_LENGTH, ITIGen)
from fairbench.errors import UserError
from fairbench.methods.base import step_index
from fairbench.models.backend import Conditioning, DiffusersBackend, SamplingParams
from fairbench.units import WorkUnit

QUEUE = 0.2
AMPLIFY = 10.0


def switch_step(steps: int, queue: float) -> int:
    """The first step that the inclusive prompt conditions."""
    return int(round(steps * queue))


def amplified(probs: torch.Tensor, scale: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention probabilities (B * heads, Q, T) with each row b's columns multiplied by scale[b] (B, T)."""
    return probs * scale.repeat_interleave(heads, dim=0)[:, None, :].to(probs)


class _Queue:
    """Per UNet call: which step it is, the base prompt's states before the switch, the amplification after."""

    def __init__(self, scheduler: Any, switch: int, base: Conditioning, scale: torch.Tensor) -> None:
        self.scheduler, self.switch, self.base, self.scale = scheduler, switch, base, scale
        self.amplify = False

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        step = step_index(self.scheduler, args[1] if len(args) > 1 else kwargs["timestep"])
        self.amplify = step >= self.switch
        if not self.amplify:
            kwargs = dict(kwargs)
            states = kwargs["encoder_hidden_states"]
            kwargs["encoder_hidden_states"] = _second_half(states, self.base.prompt_embeds)
            added = kwargs.get("added_cond_kwargs")
            if added and self.base.pooled is not None:
                kwargs["added_cond_kwargs"] = {**added, "text_embeds": _second_half(added["text_embeds"], self.base.pooled)}
        return args, kwargs


def _second_half(rows: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """`rows` with its prompt rows (the second half under classifier-free guidance) replaced by `prompt`."""
    b = prompt.shape[0]
    prompt = prompt.to(rows)
    return torch.cat([rows[:-b], prompt]) if rows.shape[0] == 2 * b else prompt


class FairQueue(ITIGen):
    """ITI-GEN's inclusive prompt after the base prompt's first steps, its tokens' attention amplified."""

    level = "guidance"
    architectures = ("sd", "sdxl")
    source = "Teo et al., FairQueue: Rethinking Prompt Learning for Fair Text-to-Image Generation (NeurIPS 2024; Bearwithchris/FairQueue_Code)"

    def __init__(self, attributes: str = "gender", queue: float = QUEUE, amplify: float = AMPLIFY,
                 amplify_tokens: str = "all", base_prompt: str = BASE_PROMPT, token_length: int = TOKEN_LENGTH,
                 lr: float = LR, epochs: int = EPOCHS, steps_per_epoch: int = STEPS_PER_EPOCH, lam: float = LAMBDA,
                 reference_per_group: int = REFERENCE_PER_GROUP, reference_dir: str | None = None,
                 clip_model: str = "auto", clip_model_2: str = "auto", seed: int = 0, cache: bool = True) -> None:
        # ITI-GEN's arguments, spelled out: the registry binds --method-arg values by signature
        super().__init__(attributes, base_prompt, token_length, lr, epochs, steps_per_epoch, lam, reference_per_group,
                         reference_dir, clip_model, clip_model_2, seed, cache)
        if not 0 <= float(queue) <= 1:
            raise UserError(f"fairqueue: queue is the share of steps on the base prompt, in [0, 1]; got {queue}")
        if not float(amplify) > 0 or float(amplify) == float("inf"):
            raise UserError(f"fairqueue: amplify must be a positive number; got {amplify}")
        if amplify_tokens not in ("all", "last"):
            raise UserError(f"fairqueue: amplify_tokens is 'all' or 'last'; got {amplify_tokens!r}")
        self.queue, self.amplify, self.amplify_tokens = float(queue), float(amplify), amplify_tokens
        self.args.update(queue=self.queue, amplify=self.amplify, amplify_tokens=amplify_tokens)

    def transform_conditioning(self, cond: Conditioning, units: list[WorkUnit], texts: list[str]) -> Conditioning:
        """The base prompt's conditioning, unchanged (the queue swaps in the inclusive one in generate)."""
        return cond

    def column_scale(self, insertions: list[Any], rows: int, width: int) -> torch.Tensor:
        """(rows, width): amplify at each prompt row's inclusive token columns, 1 elsewhere and on the
        unconditional rows that precede them."""
        scale = torch.ones(rows, width)
        first = rows - len(insertions)
        for r, ins in enumerate(insertions):
            cols = list(ins.positions) if self.amplify_tokens == "all" else [ins.positions[-1]]
            scale[first + r, cols] = self.amplify
        return scale

    def generate(self, backend: DiffusersBackend, cond: Conditioning, generators: list[torch.Generator],
                 params: SamplingParams, units: list[WorkUnit]) -> tuple[list[Any], list[bool]]:
        """The pipeline's loop on the inclusive prompt, the base prompt's states queued before the switch."""
        inclusive, insertions = self.inclusive([u.prompt for u in units], [self.combination_of(u) for u in units])
        queued = Conditioning(inclusive.prompt_embeds.to(cond.prompt_embeds), cond.negative_prompt_embeds,
                              None if inclusive.pooled is None else inclusive.pooled.to(cond.pooled), cond.negative_pooled)
        rows = len(units) * (2 if cond.negative_prompt_embeds is not None else 1)
        queue = _Queue(backend.pipe.scheduler, switch_step(params.steps, self.queue), cond,
                       self.column_scale(insertions, rows, cond.prompt_embeds.shape[1]))
        restore = self._amplify_cross_attention(backend.unet, queue)
        hook = backend.unet.register_forward_pre_hook(queue, with_kwargs=True)
        try:
            return backend.generate(queued, generators, params)
        finally:
            hook.remove()
            restore()

    @staticmethod
    def _amplify_cross_attention(unet: torch.nn.Module, queue: _Queue) -> Any:
        """Route every cross-attention layer through the classic processor, whose probabilities the queue
        scales after the switch; returns the undo."""
        layers = [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]
        saved = [(m, m.processor) for m in layers]
        for m in layers:
            scores = m.get_attention_scores

            def scaled(query: torch.Tensor, key: torch.Tensor, mask: Any = None, _scores: Any = scores,
                       _m: Attention = m) -> torch.Tensor:
                probs = _scores(query, key, mask)
                return amplified(probs, queue.scale, _m.heads) if queue.amplify else probs

            m.get_attention_scores = scaled  # type: ignore[method-assign]
            m.set_processor(AttnProcessor())

        def restore() -> None:
            for m, processor in saved:
                del m.get_attention_scores
                m.set_processor(processor)

        return restore
