"""`ctwa-hpc plot`: a figure is computed, cached, plotted and its deviations recorded."""
import json
import os

import pytest

from ctwa_hpc import cli

pytest.importorskip("matplotlib", reason="the plot extra (pip install .[plot]) is not installed")


def test_fig4_pipeline(tmp_path):
    out = tmp_path / "figs"
    assert cli.main(["plot", "fig4", "--outdir", str(out)]) == 0
    assert (out / "fig4.png").stat().st_size > 10000
    stats = json.loads((out / "fig4.json").read_text())
    # one cluster of 4 sites: operator CTWA with antithetic pairs is exact (RK4 error only)
    assert stats["reduced_c4"][0] < 1e-5
    # the error shrinks with the cluster size (max |dev| over t <= 20)
    assert stats["reduced_c1"][0] > stats["reduced_c2"][0] > stats["reduced_c4"][0]
    assert stats["sb_c1"][0] > stats["sb_c2"][0] > stats["sb_c4"][0]
    mtime = os.path.getmtime(out / "data" / "fig4_sb_c2.h5")
    assert cli.main(["plot", "fig4", "--outdir", str(out)]) == 0      # cached: not recomputed
    assert os.path.getmtime(out / "data" / "fig4_sb_c2.h5") == mtime
    png = tmp_path / "one.png"
    assert cli.main(["plot", "--file", str(out / "data" / "fig4_sb_c2.h5"),
                     "--obs", "mz_staggered", "-o", str(png)]) == 0
    assert png.stat().st_size > 5000


def test_plot_errors(tmp_path):
    assert cli.main(["plot", "fig12", "--outdir", str(tmp_path)]) == 2
    assert cli.main(["plot", "--outdir", str(tmp_path)]) == 2
