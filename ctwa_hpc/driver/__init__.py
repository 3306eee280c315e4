"""Running a simulation: the work plan, rows and their checkpoint state, the block loop,
checkpoints, guards, calibration and the pre-flight estimate, the runner and the session
(resolve -> guards -> estimate -> run -> write) that the CLI and ``ctwa_hpc.run`` share.

Imports every room below it (tools, model, config, method, exact, output).
"""
