"""Segment Anything as a label source: clicks to masks, offline (the ``sam`` extra).

* ``weights``: the shipped MobileSAM checkpoint (sha256-checked) or any SAM checkpoint, the model
  built from it (Meta's ``segment-anything`` for the prompt encoder, mask decoder and ViT-B/L/H);
* ``tiny_vit``: MobileSAM's TinyViT image encoder (ours; see its docstring for why);
* ``masks``: images embedded in batches, every click of an image decoded in one call;
* ``rules``: which mask each click keeps and who wins overlaps (the registry); ``paint``: applies one;
* ``labeller``: a split's images labelled from their clicks (what the ``extension-labels``
  stage and Table 5's ``sam`` row run).

The extra is optional: only ``rules`` (plain dataclasses) is imported outside a SAM run; the
modules that need ``segment-anything`` import it when SAM runs, and say how to install it.
"""
