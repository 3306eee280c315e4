"""Conserved quantities are monitored on every block (issue 10, item 11): the Gram matrices of
each cluster's vectors (SB norm, λ± of the reduced form) and H_W for a static Hamiltonian."""
import numpy as np
import pytest

import ctwa_hpc
from ctwa_hpc.method import conservation


@pytest.mark.parametrize("method", ["sb", "reduced", "meanfield"])
def test_drift_small_at_a_good_step_and_flagged_at_an_unstable_one(method):
    ov = {"method.kind": method, "method.samples": 100, "method.antithetic": False}
    good = ctwa_hpc.run("jobs/tfim4.toml", dict(ov, **{"time.dt": 0.01}), quiet=True)
    md = good.metadata
    assert md["conservation_drift_gram"] < 1e-7
    assert md["conservation_drift_energy_rel"] < 1e-7
    assert "warnings" not in md
    bad = ctwa_hpc.run("jobs/tfim4.toml", dict(ov, **{"time.dt": 0.7, "time.output_dt": 0.7,
                                                      "time.t_max": 21.0}), quiet=True)
    md = bad.metadata
    assert md["conservation_drift_energy_rel"] > 10 * conservation.ENERGY_TOLERANCE
    assert "time.dt = 0.7 is too large" in md["warnings"]


def test_rk4_drift_falls_with_dt():
    """Halving dt reduces the drift by ~2⁴ (RK4): the monitor measures integration error."""
    d = []
    for dt in (0.08, 0.04):
        r = ctwa_hpc.run("jobs/tfim4.toml", {"method.samples": 50, "time.dt": dt,
                                             "time.output_dt": 0.08, "time.t_max": 8.0},
                         quiet=True)
        d.append(r.metadata["conservation_drift_gram"])
    assert d[0] / d[1] > 8.0, d


def test_time_dependent_model_checks_norms_only():
    r = ctwa_hpc.run("jobs/floquet_tfim.toml", {"method.samples": 20, "time.t_max": 1.0},
                     quiet=True)
    assert "conservation_drift_energy_rel" not in r.metadata
    assert r.metadata["conservation_drift_gram"] < 1e-6
