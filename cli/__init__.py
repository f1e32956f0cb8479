"""The thin Click layer over :mod:`pointparse` (installed as ``pointparse.cli``)."""
