"""Adapters for other training frameworks. Each submodule imports its framework on import, so
``import vaopd_kernels`` never needs them: ``from vaopd_kernels.integrations.trl import VAOPDTrainer``
needs the ``trl`` extra (``pip install -e ".[trl]"`` from a clone). See docs/integrations.md."""
