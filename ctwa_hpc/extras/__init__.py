"""User-facing extras built on a run: ``check-dt`` (integrator error against the Monte Carlo
error), plots of output files, and the paper's figures.

Imports the driver and the rooms below it; nothing imports extras except the CLI.
"""
