"""Config validation: every bad input is rejected before work, with the field named."""
import pytest

from ctwa_hpc import config
from ctwa_hpc.tools.exceptions import ConfigError


def base():
    return {"model": {"kind": "tfim", "n_sites": 4, "J": 0.125, "hx": 1.0},
            "time": {"t_max": 1.0, "dt": 0.01, "output_dt": 0.1},
            "method": {"kind": "sb", "cluster_size": 2, "samples": 10}}


def test_defaults_filled_and_roundtrip():
    import tomllib
    cfg = config.resolve(base())
    assert cfg["method"]["seed"] == 1 and cfg["disorder"]["realizations"] == 1
    assert cfg["state"]["kind"] == "neel"
    again = config.resolve(tomllib.loads(config.dumps(cfg)))
    assert again == cfg


@pytest.mark.parametrize("mutate, field", [
    (lambda c: c["model"].update(foo=1), "model.foo"),
    (lambda c: c.update(bogus={}), "bogus"),
    (lambda c: c["model"].update(n_sites="4"), "model.n_sites"),
    (lambda c: c["model"].update(kind="potts"), "model.kind"),
    (lambda c: c["model"].update(J=float("nan")), "model.J"),
    (lambda c: c["model"].update(terms=[{"coef": 1, "ops": "X0"}]), "model.terms"),
    (lambda c: c["time"].update(dt=0.0), "time.dt"),
    (lambda c: c["time"].update(dt=-0.1), "time.dt"),
    (lambda c: c["time"].update(t_max=-1.0), "time.t_max"),
    (lambda c: c["time"].update(output_dt=0.015), "time.output_dt"),
    (lambda c: c["time"].update(t_max=1.05), "time.t_max"),
    (lambda c: c["method"].update(samples=0), "method.samples"),
    (lambda c: c["method"].update(samples=True), "method.samples"),
    (lambda c: c["method"].update(kind="magic"), "method.kind"),
    (lambda c: c["method"].update(cluster_size=5), "method.cluster_size"),
    (lambda c: c["method"].update(antithetic=True, samples=11), "method.samples"),
    (lambda c: c["method"].update(sampling="discrete"), "method.sampling"),
    (lambda c: c["method"].update(backend="gpu"), "method.backend"),
    (lambda c: c["method"].update(offsets=[0, 0]), "method.offsets"),
    (lambda c: c["observables"].update(names=[3]) if "observables" in c
     else c.update(observables={"names": [3]}), "observables.names"),
    (lambda c: c["model"].pop("n_sites"), "model.n_sites"),
])
def test_bad_input_names_field(mutate, field):
    raw = base()
    mutate(raw)
    with pytest.raises(ConfigError) as exc:
        config.resolve(raw)
    assert str(exc.value).startswith(field), str(exc.value)


def test_model_and_state_errors_before_work():
    from ctwa_hpc.driver.runner import Simulation
    raw = base()
    raw["model"] = {"kind": "custom", "n_sites": 4, "terms": [{"coef": 1.0, "ops": "Q0"}]}
    with pytest.raises(ValueError, match=r"model.terms\[0\]"):
        Simulation(config.resolve(raw))
    raw = base()
    raw["method"]["clusters"] = [[0, 1], [1, 2, 3]]
    with pytest.raises(ValueError, match="method.clusters"):
        Simulation(config.resolve(raw))
    raw = base()
    raw["method"]["clusters"] = [[0, 1], [2]]
    with pytest.raises(ValueError, match="method.clusters"):
        Simulation(config.resolve(raw))
    raw = base()
    raw["state"] = {"kind": "pattern", "pattern": "udx"}
    with pytest.raises(ValueError, match="state.pattern"):
        Simulation(config.resolve(raw))
    raw = base()
    raw["observables"] = {"names": ["sz"], "pairs": [[0, 9]]}
    with pytest.raises(ValueError, match=r"observables.pairs\[0\]"):
        Simulation(config.resolve(raw))
    raw = base()
    raw["model"]["terms"] = None
    raw["model"] = {"kind": "custom", "n_sites": 4,
                    "terms": [{"coef": 1.0, "ops": "X0", "f": "import_os(t)"}]}
    with pytest.raises(ValueError, match=r"model.terms\[0\].f"):
        Simulation(config.resolve(raw))


def test_override_parsing():
    assert config.parse_override("method.samples=20") == ("method", "samples", 20)
    assert config.parse_override('method.kind="operator"') == ("method", "kind", "operator")
    assert config.parse_override("method.kind=operator") == ("method", "kind", "operator")
    with pytest.raises(ConfigError):
        config.parse_override("samples=3")


def test_shipped_jobs_are_valid():
    import glob
    from ctwa_hpc.driver.runner import Simulation
    import os
    files = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "jobs", "*.toml")))
    assert files
    for f in files:
        Simulation(config.load(f))
