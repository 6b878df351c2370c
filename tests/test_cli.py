"""The command line: ``prunable-nn demo`` end to end on a tiny synthetic IDX data set."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from idx_files import write_dataset
from prunable_nn import cli

ROW = re.compile(
    r"^\s*(\d+)\s+(\d+(?:/\d+)*)\s+([\d,]+)\s+([\d.]+)\s+(-|[\d.]+%)\s+([\d.]+)%$"
)
TINY = ["--epochs", "2", "--rounds", "3", "--max-to-prune", "5", "--finetune-steps", "4",
        "--batch-size", "16", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    write_dataset(folder, train_size=160, test_size=60)
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str) -> list[dict]:
    rows = []
    for line in out.splitlines():
        match = ROW.match(line)
        if match:
            round_, channels, params, mflops, pruned, tuned = match.groups()
            rows.append({
                "round": int(round_),
                "channels": [int(c) for c in channels.split("/")],
                "params": int(params.replace(",", "")),
                "mflops": float(mflops),
                "pruned": None if pruned == "-" else float(pruned.rstrip("%")),
                "tuned": float(tuned),
            })
    return rows


def test_demo_prints_a_table_of_shrinking_networks(capsys, tiny_data):
    code, out, err = run(capsys, "demo", "--data", str(tiny_data), *TINY)
    assert code == 0, err
    assert cli.HEADER in out
    rows = table_rows(out)
    assert [row["round"] for row in rows] == [0, 1, 2, 3]
    assert rows[0]["channels"] == [20, 20, 20] and rows[0]["pruned"] is None
    assert rows[0]["tuned"] > 50  # the bands are easy: the trained net is far above chance
    for before, after in zip(rows, rows[1:]):
        removed = sum(before["channels"]) - sum(after["channels"])
        assert 1 <= removed <= 5
        assert after["params"] < before["params"] and after["mflops"] < before["mflops"]
        assert 0 <= after["pruned"] <= 100 and 0 <= after["tuned"] <= 100
    assert "160 training and 60 test images" in out
    assert re.search(r"parameters [\d.]+% and FLOPs [\d.]+% of the unpruned network", out)
    assert "Traceback" not in err


def test_demo_first_row_matches_an_unpruned_digits_net(capsys, tiny_data):
    from models import DigitsNet
    from prunable_nn import count_flops, count_parameters

    code, out, _ = run(capsys, "demo", "--data", str(tiny_data), *TINY, "--rounds", "0")
    assert code == 0
    (row,) = table_rows(out)
    net = DigitsNet()
    assert row["params"] == count_parameters(net)
    assert row["mflops"] == pytest.approx(count_flops(net, torch.zeros(1, 1, 28, 28)) / 1e6, abs=0.01)


def test_demo_stops_when_nothing_is_left(capsys, tiny_data):
    code, out, _ = run(capsys, "demo", "--data", str(tiny_data), *TINY, "--rounds", "4", "--max-to-prune", "60")
    assert code == 0
    rows = table_rows(out)
    assert rows[-1]["channels"] == [1, 1, 1] and len(rows) == 2
    assert "nothing left to prune" in out


def test_demo_subsets_and_restores_threads(capsys, tiny_data):
    threads = torch.get_num_threads()
    code, out, _ = run(capsys, "demo", "--data", str(tiny_data), *TINY, "--rounds", "0",
                       "--train-size", "50", "--test-size", "20", "--threads", "1")
    assert code == 0
    assert "50 training and 20 test images" in out
    assert torch.get_num_threads() == threads


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--data", "--train-size", "--test-size", "--epochs", "--rounds", "--max-to-prune",
                   "--finetune-steps", "--batch-size", "--lr", "--seed", "--threads", "--no-progress"):
        assert option in out
    assert "dataset-fashion-mnist" in out


def test_top_level_help_and_missing_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0 and "demo" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train-size", "-5"], "argument --train-size: expected an integer >= 0, got -5"),
        (["--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
        (["--batch-size", "many"], "argument --batch-size: expected a positive integer, got 'many'"),
        (["--max-to-prune", "-1"], "argument --max-to-prune: expected a positive integer, got -1"),
        (["--lr", "0"], "argument --lr: expected a positive number, got 0"),
        (["--lr", "nan"], "argument --lr: expected a positive number, got nan"),
        (["--data", "/no/such/folder"], "argument --data: '/no/such/folder' is not a folder"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_options_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_folder_without_the_files_exits_1_with_install_hint(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--data", str(tmp_path), *TINY)
    assert code == 1 and out == ""
    assert err.startswith("prunable-nn demo: error: train-images-idx3-ubyte[.gz] not found")
    assert "apt-get install dataset-fashion-mnist" in err
    assert len(err.strip().splitlines()) == 1


def test_images_of_the_wrong_size_exit_1(capsys, tmp_path):
    write_dataset(tmp_path, train_size=10, test_size=5, size=8)
    code, _, err = run(capsys, "demo", "--data", str(tmp_path), *TINY)
    assert code == 1
    assert "the training images are 8x8, DigitsNet needs 28x28" in err


def test_corrupt_file_exits_1(capsys, tmp_path):
    write_dataset(tmp_path, train_size=10, test_size=5)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x00\x00\x09\x01")
    code, _, err = run(capsys, "demo", "--data", str(tmp_path), *TINY)
    assert code == 1 and "bad IDX magic number 0x00000901" in err


def test_python_dash_m_runs_the_cli(tiny_data):
    result = subprocess.run(
        [sys.executable, "-m", "prunable_nn", "demo", "--data", str(tiny_data), *TINY, "--rounds", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert [row["round"] for row in table_rows(result.stdout)] == [0, 1]
    assert result.stderr == ""  # --no-progress: no bars
