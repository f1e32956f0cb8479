"""SAM rules: which mask each click keeps, and who wins where masks overlap (the registry).

A rule (:class:`SamRule`, registry :data:`RULES`) has two parts, applied to one image's
:class:`~pointparse.sam.masks.ClickMasks` by :func:`pointparse.sam.paint.paint`:

* the **choice** (:data:`CHOICES`): for each click, one of SAM's three masks, or none;
  ``best`` — the highest predicted IoU; ``smallest`` — the smallest mask whose predicted IoU is at
  least ``min_score`` (else the best); the ``clean-*`` choices first discard every mask that holds
  a click of *another* class (its logit there > ``threshold``), then take the best / the
  smallest confident / the largest confident of those left, and drop the click when none is left;
* the **overlap** (:data:`OVERLAPS`): a pixel inside several chosen masks gets the class of the
  ``smallest`` mask (masks painted large to small), of the mask with the highest ``logit``, of the
  ``nearest`` click, or — ``agree`` — the smallest mask's class only where every covering mask has
  the same class (255 where they disagree).

A mask covers the pixels whose upsampled logit is above ``threshold`` (SAM's own is 0). Every
pixel no chosen mask covers is 255; every clicked pixel keeps its click's class.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, unknown_choice

CHOICES = {
    "best": "SAM's highest predicted IoU",
    "smallest": "the smallest mask with predicted IoU >= min_score (else the best)",
    "clean-best": "the best mask holding no click of another class (none: the click is dropped)",
    "clean-smallest": "the smallest such mask with predicted IoU >= min_score (else the best such mask)",
    "clean-largest": "the largest such mask with predicted IoU >= min_score (else the best such mask)",
}
OVERLAPS = {
    "smallest": "the smallest covering mask wins (painted large to small)",
    "logit": "the covering mask with the highest logit wins",
    "nearest": "the covering mask whose click is nearest wins",
    "agree": "the smallest covering mask's class where all covering masks agree, else 255",
}


@dataclass(frozen=True)
class SamRule:
    """A mask choice and an overlap rule (module docstring), with their constants."""

    choice: str
    overlap: str = "smallest"
    min_score: float = 0.0
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.choice not in CHOICES:
            raise unknown_choice("SAM mask choice", self.choice, CHOICES)
        if self.overlap not in OVERLAPS:
            raise unknown_choice("SAM overlap rule", self.overlap, OVERLAPS)
        if not 0.0 <= float(self.min_score) <= 1.0:
            raise ConfigError(f"SAM rule min_score must be in [0, 1], got {self.min_score!r}")


#: the named rules (``sam_rule``); the default was chosen by benchmarks/sam_labels.py's rule (README)
RULES: dict[str, SamRule] = {
    "best": SamRule("best"),
    "smallest-0.8": SamRule("smallest", min_score=0.8),
    "clean-best": SamRule("clean-best"),
    "clean-best-logit": SamRule("clean-best", "logit"),
    "clean-best-nearest": SamRule("clean-best", "nearest"),
    "clean-best-agree": SamRule("clean-best", "agree"),
    "clean-smallest-0.8": SamRule("clean-smallest", min_score=0.8),
    "clean-smallest-0.8-agree": SamRule("clean-smallest", "agree", min_score=0.8),
    "clean-largest-0.8": SamRule("clean-largest", min_score=0.8),
    "clean-best-t1": SamRule("clean-best", threshold=1.0),
}
DEFAULT_RULE = "clean-smallest-0.8"


def get_rule(name: str) -> SamRule:
    if name not in RULES:
        raise unknown_choice("SAM rule", name, RULES)
    return RULES[name]
