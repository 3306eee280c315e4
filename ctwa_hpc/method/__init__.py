"""The CTWA method (sec. II-V of the paper): clusters and partitions, Wigner sampling (eqs.
(18), (52)-(54)), the classical equations (eqs. (10), (19), (61)) in NumPy and through the
compiled kernels (:mod:`.kernels`, the only import point of ``_kernels``), conservation
monitors, observables and the statistics of samples.

Imports :mod:`ctwa_hpc.tools` and :mod:`ctwa_hpc.model` only.
"""
