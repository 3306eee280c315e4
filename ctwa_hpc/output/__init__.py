"""The output file: naming rules (:mod:`.schema`), per-realization rows, the layout plan, the
HDF5 writers and readers (:mod:`.hdf5`), and ``merge`` of jobs.

Imports :mod:`ctwa_hpc.tools`, :mod:`ctwa_hpc.config`, :mod:`ctwa_hpc.model` and
:mod:`ctwa_hpc.method`; never the driver.
"""
