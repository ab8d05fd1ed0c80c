"""Code of the xray2ct MONAI Label app (``main.py`` imports it as ``lib``, the MONAI Label convention).

``tissue`` and ``results`` need only numpy, scipy and torch (the project's tests import them without MONAI Label);
``infers`` needs MONAI Label.
"""
