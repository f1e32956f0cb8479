"""pointparse: point-supervised scene parsing (PDML + online label extension, AAAI 2019).

Label conventions used everywhere in the library:

* class masks are ``uint8``/``int64`` maps of class ids ``0..C-1``;
* ``IGNORE_INDEX`` (255) marks pixels that carry no label (void, "other", off-click);
* instance maps are ``int32`` with 0 = no instance and ids ``>0`` unique within one image.
"""

__version__ = "0.1.0"

IGNORE_INDEX = 255

__all__ = ["IGNORE_INDEX", "__version__"]
