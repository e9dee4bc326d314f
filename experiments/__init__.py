"""Laptop-scale reproduction of the VA-OPD effect (issue 7): a fine-detail task, a shipped tiny
teacher, a format-only student, and OPD vs VA-OPD across seeds (``python -m experiments.reproduce``)."""
