"""Benchmarks (``make bench``, ``make bench-threads``, ``make bench-mpi``).

Layers, each importing only those above it in this list (and the rooms below the package):

* :mod:`.machine`: platform description, the single-core dgemm/sgemm reference, the
  environment of benchmark subprocesses;
* :mod:`.cases`: the benchmark cases, their inputs, timing sizes and flop counts;
* :mod:`.timing`: one case prepared for timing (:class:`~.timing.TimedCase`);
* :mod:`.scaling`: OpenMP threads, hybrid MPI × OpenMP, the sparse/dense crossover;
* :mod:`.throughput`: ``ctwa-hpc bench`` (kernel throughput against NumPy and dgemm);
* :mod:`.allreduce` and :mod:`.mpi`: ``python -m ctwa_hpc.bench.mpi`` (MPI scaling).

:mod:`.rankprobe` (one rank of the MPI scale table) runs the CLI in-process; it is only
executed (``python -m ctwa_hpc.bench.rankprobe``), never imported.  Nothing in bench imports
the CLI otherwise; the CLI imports :mod:`.throughput`.
"""
