"""`vanilla`: the model as it is, no debiasing (the baseline every method is compared with)."""

from fairbench.methods.base import Method


class Vanilla(Method):
    """Identity at every level."""

    level = "none"
    source = "no debiasing"
