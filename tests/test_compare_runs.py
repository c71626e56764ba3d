"""scripts/compare_runs.py: point-by-point changes and the BD-rate of one run's curve against
another's."""

import pandas as pd

from conftest import load_script

compare_runs = load_script("compare_runs")


def curve(bytes_, psnr, name="c"):
    return pd.DataFrame({"codec": [f"{name}:q={i}" for i in range(len(bytes_))], "curve": name,
                         "bytes_mean": bytes_, "psnr_db": psnr})


def test_ten_percent_fewer_bytes_at_the_same_psnr_is_a_bd_rate_of_minus_ten(tmp_path, capsys):
    psnr = [20.0, 25.0, 30.0, 35.0]
    old, new = curve([10.0, 20.0, 40.0, 80.0], psnr), curve([9.0, 18.0, 36.0, 72.0], psnr)
    old.to_csv(tmp_path / "old.csv", index=False)
    (tmp_path / "new").mkdir()
    new.to_csv(tmp_path / "new" / "summary.csv", index=False)
    assert compare_runs.main([str(tmp_path / "old.csv"), str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "| `c:q=1` | 20.000 | 18.000 | -10.00 % | 25.00 | 25.00 |" in out
    assert "BD-rate, new curve against old: -10.00 %" in out


def test_a_curve_missing_from_either_run_is_named(tmp_path, capsys):
    curve([1.0, 2.0], [20.0, 30.0]).to_csv(tmp_path / "a.csv", index=False)
    curve([1.0, 2.0], [20.0, 30.0], "d").to_csv(tmp_path / "b.csv", index=False)
    assert compare_runs.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 0  # nothing shared
    assert compare_runs.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--curves", "c"]) == 2
    assert "not in both runs: c (new run)" in capsys.readouterr().err


def test_a_dominated_point_is_left_out_of_the_bd_rate_as_the_report_does(tmp_path, capsys):
    """A point with more bytes and no more PSNR than another of its curve would make the curve
    non-monotone (PCHIP refuses it): the BD-rate is over the undominated points, the table shows all."""
    psnr = [20.0, 25.0, 30.0, 35.0]
    old = curve([10.0, 20.0, 40.0, 80.0], psnr)
    new = curve([9.0, 18.0, 36.0, 72.0, 100.0], [*psnr, 34.0])  # its last point is dominated
    old.to_csv(tmp_path / "old.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    assert compare_runs.main([str(tmp_path / "old.csv"), str(tmp_path / "new.csv")]) == 0
    assert "BD-rate, new curve against old: -10.00 %" in capsys.readouterr().out


def test_a_curve_renamed_by_a_fixed_parameter_is_compared_setting_by_setting(tmp_path, capsys):
    """`--pair OLD NEW`: the default recipe's curve against a variant's (`c:epochs=9`), each
    setting paired with the one of the same rate."""
    psnr = [20.0, 25.0, 30.0]
    curve([10.0, 20.0, 40.0], psnr).to_csv(tmp_path / "old.csv", index=False)
    new = curve([9.0, 18.0, 36.0], psnr, "c:epochs=9")
    new.to_csv(tmp_path / "new.csv", index=False)
    args = [str(tmp_path / "old.csv"), str(tmp_path / "new.csv"), "--pair", "c", "c:epochs=9"]
    assert compare_runs.main(args) == 0
    out = capsys.readouterr().out
    assert "## c → c:epochs=9" in out and "| `c:q=2` | 40.000 | 36.000 | -10.00 % |" in out
    assert "BD-rate, new curve against old: -10.00 %" in out
    assert compare_runs.main(args[:2] + ["--pair", "c", "c:epochs=8"]) == 2
    assert "not in both runs: c:epochs=8 (new run)" in capsys.readouterr().err


def test_settings_pair_by_their_rate_wherever_it_sorts_among_the_fixed_parameters(tmp_path, capsys):
    """Parameters are listed alphabetically, so a curve's fixed ones (`shared_header=1`) may follow
    the rate (`jpeg:quality=10:shared_header=1`); a curve named with `=` is one name."""
    rows = [(f"jpeg:quality={q}:shared_header=1", b, p) for q, b, p in ((10, 100.0, 25.0), (20, 150.0, 28.0),
                                                                        (30, 200.0, 30.0))]
    old = pd.DataFrame(rows, columns=["codec", "bytes_mean", "psnr_db"]).assign(curve="jpeg:shared_header=1")
    new = old.assign(bytes_mean=old["bytes_mean"] * 0.9)
    old.to_csv(tmp_path / "old.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    assert compare_runs.main([str(tmp_path / "old.csv"), str(tmp_path / "new.csv"),
                              "--curves", "jpeg:shared_header=1"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| `")]
    assert len(table) == 3 and all("-10.00 %" in line for line in table)
