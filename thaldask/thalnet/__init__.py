"""The built-in ``thalnet`` model and how it is made.

``network`` (the 3D U-Nets), ``inference`` (loading the shipped weights, segmenting one
scan), ``augment`` (domain-randomised training images), ``train`` (``thaldask train``),
``validate`` (whole-head renders of held-out anatomy and Dice on them) and ``card`` (the
model card written beside a set of weights). The segmentation runtime that serves the model
to users, Dask workers and plugins is :mod:`thaldask.segment`.

Importing this package is light (no torch): torch loads with the submodules that need it.
"""
