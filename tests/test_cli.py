"""The command line: ``prunable-nn demo`` end to end on a tiny synthetic IDX data set."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import matplotlib.image
import pytest
import torch
from idx_files import write_dataset

from models import VGG
from prunable_nn import TaylorPruner, count_flops, count_parameters, load_pruned
from prunable_nn.app import cli
from prunable_nn.app.demo import HEADER, DemoConfig

ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)%\s+(-|[\d.]+)\s+\d+s$")
LOAD = re.compile(r"^load it with: (load_pruned\(.*\))$", re.MULTILINE)
#: A VGG-11 of width 1/8 (8..64 channels) and hidden layers of 16: 207 prunable units.
TINY = ["--width", "0.125", "--hidden", "16", "--epochs", "1", "--batch-size", "16", "--val-size", "40",
        "--steps-per-round", "3", "--max-to-prune", "8", "--finetune-steps", "3", "--target-flops", "0.8",
        "--latency-time", "0.01", "--threads", "1", "--no-progress", "--no-compile"]


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
            round_, left, params, mflops, flops, accuracy, loss = match.groups()
            rows.append({
                "round": int(round_), "left": int(left), "params": int(params.replace(",", "")),
                "mflops": float(mflops), "flops": float(flops), "accuracy": float(accuracy),
                "loss": None if loss == "-" else float(loss),
            })
    return rows


def tiny_vgg() -> VGG:
    return VGG("vgg11", 10, 1, 28, width=0.125, hidden=16)


def units_left(model: VGG) -> int:
    """The units the demo's pruner (channels in blocks of ``round_to``) could still remove."""
    return TaylorPruner(model, model.example_inputs(), round_to=DemoConfig.round_to).num_prunables


@pytest.fixture(scope="module")
def demo_run(tiny_data, tmp_path_factory):
    """One end-to-end run on the tiny settings, shared by the tests that read its output
    (capsys is per test): (exit code, stdout, stderr, output folder)."""
    out_dir = tmp_path_factory.mktemp("demo") / "out"  # made by the demo
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["demo", "--data", str(tiny_data), "--out", str(out_dir), *TINY])
    return code, stdout.getvalue(), stderr.getvalue(), out_dir


def test_demo_prunes_round_by_round_to_the_flops_target(demo_run):
    code, out, err, _ = demo_run
    assert code == 0, err
    assert HEADER in out and "Traceback" not in err
    assert "120 training, 40 validation and 60 test images; target 80% of the FLOPs" in out
    rows = table_rows(out)
    unpruned = tiny_vgg()
    assert rows[0]["round"] == 0 and rows[0]["loss"] is None and rows[0]["flops"] == 100.0
    assert rows[0]["params"] == count_parameters(unpruned)
    assert rows[0]["mflops"] == pytest.approx(count_flops(unpruned, unpruned.example_inputs()) / 1e6, abs=0.006)
    assert rows[0]["left"] == units_left(unpruned)
    assert [row["round"] for row in rows] == list(range(len(rows))) and len(rows) >= 3
    for before, after in itertools.pairwise(rows):
        assert 1 <= before["left"] - after["left"] <= 8
        assert after["params"] < before["params"] and after["mflops"] < before["mflops"]
        assert after["loss"] > 0 and 0 <= after["accuracy"] <= 100
    # the first round at or under 80% of the FLOPs is the last
    assert rows[-1]["flops"] <= 80.0 < rows[-2]["flops"]
    assert f"FlopsTarget(fraction=0.8) reached in round {rows[-1]['round']}" in out
    assert re.search(r"fine-tuned for 3 steps: mean loss [\d.]+, validation accuracy [\d.]+%", out)


def test_demo_summary_compares_the_two_networks(demo_run):
    _, out, _, _ = demo_run
    rows = table_rows(out)
    summary = out.splitlines()
    start = next(index for index, line in enumerate(summary) if "test acc" in line)
    title, *lines = summary[start : start + 4]
    assert re.search(r"latency, 1 image\s+latency, 64 images$", title)
    number = r"\s+([\d.]+)"
    unpruned = re.match(rf"unpruned{number}%{number}\s+([\d,]+){number} ms{number} ms$", lines[0])
    pruned = re.match(rf"pruned{number}%{number}\s+([\d,]+){number} ms{number} ms$", lines[1])
    change = re.match(rf"change\s+([+-][\d.]+) pt{number}%{number}%{number}x speed-up{number}x speed-up$", lines[2])
    assert unpruned and pruned and change, lines
    assert float(unpruned[2]) == rows[0]["mflops"] and float(pruned[2]) == rows[-1]["mflops"]
    assert int(unpruned[3].replace(",", "")) == rows[0]["params"]
    assert int(pruned[3].replace(",", "")) == rows[-1]["params"]
    assert float(change[1]) == pytest.approx(float(pruned[1]) - float(unpruned[1]), abs=0.011)
    assert float(change[2]) == pytest.approx(rows[-1]["flops"], abs=0.051)
    assert float(change[3]) == pytest.approx(100 * rows[-1]["params"] / rows[0]["params"], abs=0.051)
    for column in (4, 5):  # median ratios of alternating measurements: near the ratio of medians
        ratio = float(unpruned[column]) / float(pruned[column])
        assert ratio / 2 <= float(change[column]) <= 2 * ratio
    # a batch of 64 takes longer than a single image
    assert float(unpruned[5]) > float(unpruned[4]) and float(pruned[5]) > float(pruned[4])
    assert summary[start + 4] == (
        "latency: median of 20 alternating measurements of the plain-torch copies on 1 thread, run eagerly "
        "(not compiled)"
    )


def test_demo_writes_a_model_that_loads_as_printed(demo_run):
    _, out, _, out_dir = demo_run
    rows = table_rows(out)
    saved = torch.load(out_dir / "pruned.pt", weights_only=True)  # data only
    assert saved["format"] == "prunable_nn.pruned_model"
    # the line the demo prints is the Python that loads it
    model = eval(LOAD.search(out)[1], {"VGG": VGG, "load_pruned": load_pruned})
    assert count_parameters(model) == rows[-1]["params"]
    assert count_flops(model, model.example_inputs()) / 1e6 == pytest.approx(rows[-1]["mflops"], abs=0.006)
    assert units_left(model) == rows[-1]["left"]


def test_demo_writes_the_history_and_its_plot(demo_run):
    _, out, _, out_dir = demo_run
    rows = table_rows(out)
    with open(out_dir / "history.csv", newline="") as file:
        lines = list(csv.DictReader(file))
    assert [int(line["round"]) for line in lines] == [row["round"] for row in rows]
    assert [int(line["parameters"]) for line in lines] == [row["params"] for row in rows]
    assert [int(line["units_left"]) for line in lines] == [row["left"] for row in rows]
    assert [line["reached"] for line in lines] == ["False"] * (len(rows) - 1) + ["True"]
    image = matplotlib.image.imread(out_dir / "history.png")
    assert image.shape[0] > 100 and image[..., :3].std() > 0.05
    assert f"wrote {out_dir / 'pruned.pt'}, {out_dir / 'history.csv'}, {out_dir / 'history.png'}" in out


def test_max_rounds_stops_early_and_threads_come_back(capsys, tiny_data, tmp_path):
    threads = torch.get_num_threads()
    code, out, err = run(capsys, "demo", "--data", str(tiny_data), "--out", str(tmp_path), *TINY,
                         "--max-rounds", "1", "--train-size", "50", "--test-size", "20")
    assert code == 0, err
    assert "50 training, 40 validation and 20 test images" in out
    assert [row["round"] for row in table_rows(out)] == [0, 1]
    assert "max_rounds=1 reached" in out
    assert torch.get_num_threads() == threads


def test_flops_per_round_shrinks_every_round_by_about_that_share(capsys, tiny_data, tmp_path):
    code, out, err = run(capsys, "demo", "--data", str(tiny_data), "--out", str(tmp_path), *TINY,
                         "--flops-per-round", "0.05", "--round-to", "16")  # --round-to above --max-to-prune 8
    assert code == 0, err
    rows = table_rows(out)
    mflops = [row["mflops"] for row in rows]
    drops = [(earlier - later) / mflops[0] for earlier, later in zip(mflops, mflops[1:])]
    assert len(drops) >= 3 and all(0.025 <= drop <= 0.1 for drop in drops), drops
    assert rows[-1]["flops"] <= 80 < rows[-2]["flops"]


def test_help_explains_every_setting(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    options = {field.name: "--" + field.name.replace("_", "-") for field in fields(DemoConfig)}
    options.update(out_dir="--out", progress="--no-progress")
    for option in [*options.values(), "--threads"]:
        assert re.search(rf"^\s+{option}\b.*\n?.*\w", out, re.MULTILINE), option
    assert "dataset-fashion-mnist" in out and "pruned.pt" in out


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
        (["--val-size", "0"], "argument --val-size: expected a positive integer, got 0"),
        (["--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
        (["--batch-size", "many"], "argument --batch-size: expected a positive integer, got 'many'"),
        (["--max-to-prune", "-1"], "argument --max-to-prune: expected a positive integer, got -1"),
        (["--lr", "0"], "argument --lr: expected a positive number, got 0"),
        (["--lr", "nan"], "argument --lr: expected a positive number, got nan"),
        (["--width", "inf"], "argument --width: expected a positive number, got inf"),
        (["--target-flops", "50"], "argument --target-flops: expected a fraction in (0, 1], got 50"),
        (["--target-flops", "0"], "argument --target-flops: expected a fraction in (0, 1], got 0"),
        (["--flops-per-round", "2"], "argument --flops-per-round: expected a fraction in (0, 1], got 2"),
        (["--round-to", "0"], "argument --round-to: expected a positive integer, got 0"),
        (["--latency-threads", "0"], "argument --latency-threads: expected a positive integer, got 0"),
        (["--flops-regularization", "-1"], "argument --flops-regularization: expected a number >= 0, got -1"),
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


def test_round_to_above_max_to_prune_exits_2(capsys, tiny_data, tmp_path):
    code, out, err = run(capsys, "demo", "--data", str(tiny_data), "--out", str(tmp_path / "out"), *TINY,
                         "--round-to", "16")
    assert code == 2 and out == ""
    assert err.strip() == (
        "prunable-nn demo: error: --round-to 16 is more than --max-to-prune 8: channels go in blocks of --round-to"
    )
    assert not (tmp_path / "out").exists()


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
    assert "the training images are 8x8, the demo needs 28x28" in err


def test_a_validation_set_as_large_as_the_training_file_exits_1(capsys, tiny_data, tmp_path):
    code, out, err = run(capsys, "demo", "--data", str(tiny_data), "--out", str(tmp_path / "out"), *TINY,
                         "--val-size", "160")
    assert code == 1 and out == ""
    assert "val_size 160 leaves no training images (the training file has 160)" in err
    assert not (tmp_path / "out").exists()


def test_corrupt_file_exits_1(capsys, tmp_path):
    write_dataset(tmp_path, train_size=10, test_size=5)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x00\x00\x09\x01")
    code, _, err = run(capsys, "demo", "--data", str(tmp_path), *TINY)
    assert code == 1 and "bad IDX magic number 0x00000901" in err


@pytest.mark.parametrize("command", [[sys.executable, "-m", "prunable_nn"], [str(Path(sys.executable).parent / "prunable-nn")]],
                         ids=["python -m", "console script"])
def test_both_entry_points_run_the_cli(tiny_data, tmp_path, command):
    result = subprocess.run(
        [*command, "demo", "--data", str(tiny_data), "--out", str(tmp_path), *TINY, "--max-rounds", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert [row["round"] for row in table_rows(result.stdout)] == [0, 1]
    assert "Traceback" not in result.stderr and "it/s" not in result.stderr  # --no-progress: no bars
    assert (tmp_path / "pruned.pt").is_file()


def failing_compile(module, **options):
    """A stand-in for ``torch.compile`` on a machine without a C++ compiler."""
    def run(*inputs):
        raise RuntimeError("C++ compile error: g++ not found\n(full log follows)")
    return run


def test_a_network_that_does_not_compile_exits_1_naming_it_with_compile(capsys, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", failing_compile)
    code, out, err = run(capsys, "demo", "--data", str(tiny_data), "--out", str(tmp_path), *TINY,
                         "--max-rounds", "1", "--compile")
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        "prunable-nn demo: error: torch.compile could not compile the unpruned network (inductor needs "
        "a C++ compiler such as g++): C++ compile error: g++ not found"
    )
    assert (tmp_path / "pruned.pt").is_file()  # written before the timing


def test_by_default_networks_that_do_not_compile_are_timed_eagerly(capsys, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", failing_compile)
    default = [option for option in TINY if option != "--no-compile"]
    code, out, err = run(capsys, "demo", "--data", str(tiny_data), "--out", str(tmp_path), *default, "--max-rounds", "1")
    assert code == 0, err
    assert (
        "torch.compile could not compile the unpruned network (inductor needs a C++ compiler such as g++): "
        "C++ compile error: g++ not found; timing both networks eagerly instead\n"
    ) in out
    assert out.splitlines()[-3].endswith("run eagerly (not compiled)")
    assert (tmp_path / "pruned.pt").is_file()
