"""`distill bench train` runs end to end and prints every row, host syncs included."""

import re

import pytest


@pytest.mark.slow
def test_bench_train_prints_its_rows(tmp_path, capsys):
    from distill.bench_train import main

    assert main(["--steps", "2", "--warmup", "1", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for row in ("kd_cache / ce", "kd_live / (teacher + ce)", "loader / demand"):
        assert row in out
    syncs = re.findall(r"host syncs per step, (\S+)\s+(\d+)\s+goal 0", out)
    assert [name for name, _ in syncs] == ["CE", "KD-cache"]
    assert [int(n) for _, n in syncs] == [0, 0]  # outside logging steps
    assert re.findall(r"a logging step: (\d+)", out) == ["2", "2"]
