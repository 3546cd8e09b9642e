"""Figures: data plots (``plot``) and convolution-arithmetic diagrams (``draw``)."""
