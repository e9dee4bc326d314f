"""Laptop-scale experiments on the trainer: the stripe-width task and its shipped tiny teacher and
student (``make demo``), and the pre-registered OPD vs VA-OPD dilution experiment
(``python -m experiments.code_reproduce``, docs/preregistration.md)."""
