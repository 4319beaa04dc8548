"""Competing debiasing methods, registered into fairbench's method registry.

Registration goes through the `fairbench.methods` entry point (pyproject.toml), exactly as a
third-party package would plug in its own method. One module per method:

  entigen        prompt text   ethical intervention appended (Bansal et al. 2022)
  hardprompt     prompt text   a uniformly sampled group named per image (reference upper bound)
  debiasvl       embedding     calibrated projection (Chuang et al. 2023)
  fairimagen     embedding     FairPCA projection plus empirical noise (Fu et al. 2025)
  itigen         embedding     inclusive tokens learned from reference images (Zhang et al. 2023)
  fairqueue      guidance      ITI-GEN's tokens, queued after the base prompt, attention amplified (Teo et al. 2024)
  fairdiffusion  guidance      SEGA guidance, random direction per image (Friedrich et al. 2023)
  balancingact   guidance      distribution guidance on h-space classifiers (Parihar et al. 2024)
  selfdebias     guidance      unsupervised h-space modes, guided toward uniform (Korada et al. 2026)
  uce            weights       closed-form cross-attention edit (Gandikota et al. 2024)
  finetune       weights       LoRA trained through the sampler, distributional alignment (Shen et al. 2024)
"""


def register() -> None:
    """Register every baseline method (called once by fairbench's method registry)."""
    from fairbench.baselines.balancingact import BalancingAct
    from fairbench.baselines.debiasvl import DebiasVL
    from fairbench.baselines.entigen import Entigen
    from fairbench.baselines.fairdiffusion import FairDiffusion
    from fairbench.baselines.fairimagen import FairImagen
    from fairbench.baselines.fairqueue import FairQueue
    from fairbench.baselines.finetune import Finetune
    from fairbench.baselines.hardprompt import HardPrompt
    from fairbench.baselines.itigen import ITIGen
    from fairbench.baselines.selfdebias import SelfDebias
    from fairbench.baselines.uce import UCE
    from fairbench.methods import register_method

    for name, cls in (("entigen", Entigen), ("hardprompt", HardPrompt), ("debiasvl", DebiasVL),
                      ("fairimagen", FairImagen), ("itigen", ITIGen), ("fairqueue", FairQueue),
                      ("fairdiffusion", FairDiffusion), ("balancingact", BalancingAct),
                      ("selfdebias", SelfDebias), ("uce", UCE), ("finetune", Finetune)):
        register_method(name, cls)
