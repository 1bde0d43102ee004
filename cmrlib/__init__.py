"""cmrlib: the helper package of the synthetic cardiac MRI study (DDPM vs LDM vs flow matching).

Notebooks in ``notebooks/`` are short calls into this package; the logic lives here, where it is tested.
"""

__version__ = "0.1.0"
