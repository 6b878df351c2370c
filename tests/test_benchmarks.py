"""The benchmark scripts run (in their --quick mode) so that they cannot rot."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.xdist_group("subprocesses")  # conftest.py


def run_quick(script: str, out: Path, *options: str) -> subprocess.CompletedProcess:
    """``benchmarks/<script> --quick --out <out> [options]`` from the project's root; it must succeed."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), *options],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    return run


def test_overhead_benchmark_quick_run_reports_every_ratio(tmp_path):
    out = tmp_path / "overhead.json"
    run = run_quick("overhead.py", out, "--backend", "aot_eager")  # inductor would compile for a minute
    lines = run.stdout.splitlines()
    for mode in ("train", "eval", "compiled"):
        assert any(line.startswith(mode) for line in lines), mode
    results = json.loads(out.read_text())["results"]
    for mode in ("train", "eval", "compiled"):
        assert results[mode]["pairs"] == 4
        assert results[mode]["median_ratio"] > 0


def test_import_time_quick_run_compares_with_torch_and_loads_nothing_heavy(tmp_path):
    out = tmp_path / "import_time.md"
    run_quick("import_time.py", out)
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["pairs"] == 2 and result["median_prunable_nn_s"] > 0 and result["median_torch_s"] > 0
    assert "prunable_nn" in result["modules_added"]
    assert not {"torchvision", "matplotlib", "timm", "tqdm"} & set(result["modules_added"]), result["modules_added"]
    assert "| import torch s |" in out.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads glibc's mallinfo2")
def test_memory_benchmark_quick_run_measures_both_relus(tmp_path):
    out = tmp_path / "memory.md"
    run_quick("memory.py", out)
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ") and "MiB" not in line and "---" not in line]
    assert [cells[0].strip() for cells in rows] == ["out of place", "in place"]
    for cells in rows:
        ours, plain, ratio = (float(cell) for cell in cells[1:4])
        assert ours > 0 and plain > 0 and math.isclose(ratio, ours / plain, rel_tol=0.01, abs_tol=0.002)


def test_convert_benchmark_quick_run_writes_table_rows(tmp_path):
    out = tmp_path / "convert.md"
    run = run_quick("convert.py", out)
    assert "1 thread(s)" in run.stdout
    # With Torch-Pruning its version is printed; without it, how to install it.
    assert "Torch-Pruning 1." in run.stdout or "pip install --no-deps torch-pruning" in run.stdout
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")]
    rows = {(cells[0].strip(), cells[1].strip()): [cell.strip() for cell in cells] for cells in rows}
    for measure in ("convert", "prune8"):
        cells = rows[(measure, "resnet18")]
        assert cells[2] == "1x3x32x32"
        assert cells[3] == "2"
        assert float(cells[4]) > 0


def test_oracle_correlation_quick_run_tabulates_every_criterion_three_ways(tmp_path):
    out = tmp_path / "oracle.md"
    run = run_quick("oracle_correlation.py", out)
    assert "seed 1:" in run.stdout
    rows = {cells[0].strip(): [cell.strip() for cell in cells[1:]]
            for cells in (line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| "))}
    assert rows.pop("criterion") == ["per layer", "all layers", "all layers, L2"]
    assert rows.pop("---") == ["---:"] * 3
    names = ["Taylor", "activation mean", "activation std", "APoZ", "minimum weight", "random"]
    assert list(rows) == names
    seeds = json.loads(out.with_suffix(".json").read_text())["seeds"]
    assert len(seeds) == 2 and all(list(seed) == names for seed in seeds)
    for name, cells in rows.items():
        for way, cell in zip(["per layer", "all layers", "all layers, L2"], cells):
            values = [seed[name][way] for seed in seeds]
            assert all(-1 <= value <= 1 for value in values)
            assert cell.startswith(f"{sum(values) / 2:.2f} ± "), (name, way, cell)


def test_criteria_curves_quick_run_prunes_every_variant_to_the_target(tmp_path):
    out = tmp_path / "curves.md"
    run = run_quick("criteria_curves.py", out, "--jobs", "2")  # the seeds in two processes
    assert "seed 1: start model trained" in run.stdout
    seeds = json.loads(out.with_suffix(".json").read_text())["seeds"]
    names = ["Taylor", "Taylor, no L2", "Taylor, FLOPs reg. 0.01", "activation mean", "activation std", "APoZ",
             "minimum weight", "random", "oracle"]
    assert len(seeds) == 2 and all(list(seed) == names for seed in seeds)
    for seed in seeds:
        for curve in seed.values():
            flops = curve["flops"]
            assert flops[0] == 1.0 and flops[-1] <= 0.5 < min(flops[:-1])  # stops at the first row at the target
            assert all(later < earlier for earlier, later in zip(flops, flops[1:]))
            for key in ("accuracy", "recalibrated"):
                assert len(curve[key]) == len(flops) and all(0 <= a <= 1 for a in curve[key])
            # Right after prune: interpolated between the two rounds around the level, NaN past the curve.
            for level, accuracy in curve["at"].items():
                assert math.isnan(accuracy) == (flops[-1] > float(level)), (level, flops)
                if not math.isnan(accuracy):
                    assert between(accuracy, around(curve["recalibrated"], flops, float(level)))
            # Fine-tuned: exactly the rounds around each level the curve reaches, and in between them.
            # (The last prune may also take the curve below 25%: then both levels are reached.)
            tuned = {int(round_): accuracy for round_, accuracy in curve["fine_tuned_rounds"].items()}
            assert curve["fine_tuning_steps"] == {str(round_): 2 for round_ in tuned}  # --recovery-steps
            brackets = set()
            for level, accuracy in curve["fine_tuned_at"].items():
                if flops[-1] > float(level):
                    assert math.isnan(accuracy), (level, flops)
                    continue
                after = first_at_or_below(flops, float(level))
                brackets |= {after - 1, after}
                assert between(accuracy, [tuned[after - 1], tuned[after]])
            assert flops[-1] <= 0.5 and sorted(tuned) == sorted(brackets)
            # ... on the digits' 359 test images, not on the 100 held-out ones
            assert all(abs(359 * accuracy - round(359 * accuracy)) < 1e-6 for accuracy in tuned.values()), tuned
    # The progress lines name the fine-tuned levels a curve reached, and no others.
    for index, seed in enumerate(seeds):
        for name, curve in seed.items():
            line = next(line for line in run.stdout.splitlines() if line.startswith(f"  seed {index}, {name}: "))
            reached = ", ".join(f"{float(level):.0%}: {accuracy:.2%}" for level, accuracy in curve["fine_tuned_at"].items()
                                if not math.isnan(accuracy))
            assert line.endswith(f"fine-tuned accuracy at {reached}"), line
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert rows[0].split("|")[2:-1] == [
        " fine-tuned, 50% FLOPs (test) ", " fine-tuned, 25% FLOPs (test) ", " right after prune, 75% ", " right after prune, 50% ",
        " right after prune, 25% ",
    ]
    assert [row.split("|")[1].strip() for row in rows[2:]] == names
    assert (tmp_path / "curves.png").stat().st_size > 10_000

    # Every variant starts from the same generator: the same pruner is the same run whatever
    # its place among the variants (third in the L2 ranking, alone in the FLOPs one here).
    flops_out = tmp_path / "curves_flops.md"
    run_quick("criteria_curves.py", flops_out, "--jobs", "2", "--ranking", "flops", "--only", "Taylor")
    flops_seeds = json.loads(flops_out.with_suffix(".json").read_text())["seeds"]
    for seed, flops_seed in zip(seeds, flops_seeds):
        regularised, same = seed["Taylor, FLOPs reg. 0.01"], flops_seed["Taylor"]
        for key in ("flops", "accuracy", "recalibrated", "fine_tuned_rounds"):
            assert regularised[key] == same[key], key
    # ... and alone, with --only.
    only_out = tmp_path / "curves_only.md"
    run_quick("criteria_curves.py", only_out, "--jobs", "2", "--only", "random", "--only", "APoZ")
    only_seeds = json.loads(only_out.with_suffix(".json").read_text())["seeds"]
    for seed, only_seed in zip(seeds, only_seeds):
        assert list(only_seed) == ["APoZ", "random"]  # in the table's order
        for name in only_seed:
            for key in ("flops", "accuracy", "recalibrated", "fine_tuned_rounds"):
                assert only_seed[name][key] == seed[name][key], (name, key)


def test_criteria_curves_flops_per_round_shrinks_every_variant_by_about_that_share_each_round(tmp_path):
    out = tmp_path / "curves.md"
    run_quick("criteria_curves.py", out, "--flops-per-round", "0.1", "--only", "Taylor", "--only", "random")
    for seed in json.loads(out.with_suffix(".json").read_text())["seeds"]:
        for name, curve in seed.items():
            drops = [earlier - later for earlier, later in zip(curve["flops"], curve["flops"][1:])]
            assert len(drops) >= 5 and all(0.05 <= drop <= 0.2 for drop in drops), (name, drops)
    assert "rounds of 2 steps and 10.0% of the FLOPs" in out.read_text()


def test_criteria_curves_only_refuses_a_name_that_is_no_variant(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "criteria_curves.py"), "--quick", "--out",
                          str(tmp_path / "curves.md"), "--only", "Taylor", "--only", "Random"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 2 and "--only 'Random' is not a variant of --ranking l2" in run.stderr
    assert "'Taylor, no L2'" in run.stderr and "'random'" in run.stderr  # the names it knows
    assert not (tmp_path / "curves.json").exists()


def first_at_or_below(fractions: list[float], level: float) -> int:
    return next(i for i, fraction in enumerate(fractions) if fraction <= level)


def around(values: list[float], fractions: list[float], level: float) -> list[float]:
    """The values of the two rows around ``level`` (one when row 0 is at or below it)."""
    after = first_at_or_below(fractions, level)
    return values[max(after - 1, 0) : after + 1]


def between(value: float, bounds: list[float]) -> bool:
    return min(bounds) - 1e-9 <= value <= max(bounds) + 1e-9


def curves_measurements(recovery_steps):
    """``criteria_curves.Measurements`` of a tiny VGG on the digits, and a maker of its rows."""
    import criteria_curves
    import start_model
    from models import VGG
    from prunable_nn import Round
    from prunable_nn.training import make_loader

    torch.manual_seed(0)
    model = VGG("vgg11", 10, 1, 28, width=0.0625, hidden=16)
    train_set, validation = start_model.load("digits", 0, 100)
    test_loader = make_loader(start_model.images("digits", train=False), 1000)
    measured = criteria_curves.Measurements(model, train_set, make_loader(validation, 100), test_loader, 0,
                                            recovery_steps, bn_batches=2)

    def row(round_: int, flops: int) -> Round:
        return Round(round_, units_left=10, units_removed=0, parameters=1, flops=flops, train_loss=None,
                     accuracy=0.0, seconds=0.0)

    return measured, row


def test_criteria_curves_measurements_leave_torchs_generator_as_it_was():
    measured, row = curves_measurements(lambda round_: 2)
    state = torch.get_rng_state()
    measured(row(0, 100))  # batch norm re-estimated, in training mode: dropout draws
    assert torch.equal(torch.get_rng_state(), state)
    measured(row(1, 40))  # past 50%: rounds 0 and 1 fine-tuned
    assert sorted(measured.fine_tuned) == [0, 1]
    assert torch.equal(torch.get_rng_state(), state)


def test_criteria_curves_total_steps_fine_tunes_every_copy_to_the_same_training(monkeypatch):
    import criteria_curves

    parse = criteria_curves.main_parser().parse_args
    assert [criteria_curves.recovery_steps(parse([]))(round_) for round_ in (0, 7)] == [150, 150]
    to_ten = criteria_curves.recovery_steps(parse(["--total-steps", "10", "--steps-per-round", "3"]))
    assert [to_ten(round_) for round_ in (0, 1, 3)] == [10, 7, 1]
    with pytest.raises(ValueError, match=r"--total-steps 10 is fewer than the 12 steps of round 4"):
        to_ten(4)

    trained = []
    real_train_steps = criteria_curves.train_steps
    monkeypatch.setattr(criteria_curves, "train_steps",
                        lambda model, optimizer, batches, steps, **kw: trained.append(steps)
                        or real_train_steps(model, optimizer, batches, steps, **kw))
    measured, row = curves_measurements(to_ten)
    for round_, flops in enumerate((100, 80, 60, 40)):
        measured(row(round_, flops))
    assert trained == [4, 1] and measured.fine_tuning_steps == {2: 4, 3: 1}  # rounds 2 and 3, around 50%


def test_criteria_curves_table_gives_mean_and_spread_and_bolds_each_columns_best():
    import criteria_curves

    def curve(tuned: float, after: float) -> dict:
        return {"fine_tuned_at": {"0.5": tuned, "0.25": math.nan}, "at": {"0.75": after, "0.5": after, "0.25": after}}

    per_seed = [{"a": curve(0.80, 0.50), "b": curve(0.90, 0.40)}, {"a": curve(0.82, 0.60), "b": curve(0.86, 0.40)}]
    lines = criteria_curves.table(per_seed)
    cells = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in lines[2:]}
    assert cells["a"] == ["81.00% ± 1.41", "-", "**55.00% ± 7.07**", "**55.00% ± 7.07**", "**55.00% ± 7.07**"]
    assert cells["b"] == ["**88.00% ± 2.83**", "-", "40.00% ± 0.00", "40.00% ± 0.00", "40.00% ± 0.00"]


def test_criteria_curves_plot_marks_only_the_fine_tuned_levels_some_curve_reached(tmp_path, monkeypatch):
    import criteria_curves

    def curve(tuned_at_25: float) -> dict:
        return {"flops": [1.0, 0.4], "recalibrated": [0.9, 0.8], "fine_tuned_at": {"0.5": 0.85, "0.25": tuned_at_25}}

    figures = []
    monkeypatch.setattr(criteria_curves.plt, "close", figures.append)
    criteria_curves.plot([{"a": curve(math.nan), "b": curve(math.nan)}], "stops at 40%", tmp_path / "a.png")
    criteria_curves.plot([{"a": curve(math.nan), "b": curve(0.8)}], "one reaches 25%", tmp_path / "b.png")
    ticks = [list(figure.axes[1].get_xticks()) for figure in figures]
    assert ticks == [[50.0], [50.0, 25.0]]
    assert all((tmp_path / name).stat().st_size > 10_000 for name in ("a.png", "b.png"))


def test_latency_quick_run_relates_speed_ups_to_flops_factors(tmp_path):
    out = tmp_path / "latency.md"
    run_quick("latency.py", out)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(row["network"], row["level"]) for row in rows] == [("digits net", 0.5), ("resnet18", 0.5)]
    for row in rows:
        assert 2.0 <= row["flops_factor"] < 3.0  # stopped at the first round at or under half the FLOPs
        assert list(row["speedup"]) == ["eager, 2"] and row["speedup"]["eager, 2"] > 0
        assert row["prunable_over_plain"] > 0
    lines = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| network | FLOPs kept | F | S eager, 2 (S/F) |")
    first = rows[0]
    factor, speedup = first["flops_factor"], first["speedup"]["eager, 2"]
    assert lines[2] == (f"| digits net | {1 / factor:.1%} | {factor:.2f} | {speedup:.2f}x ({speedup / factor:.2f}) | "
                        f"{first['prunable_over_plain']:.2f} |")


def test_latency_quick_run_with_rounding_times_networks_of_whole_blocks(tmp_path):
    out = tmp_path / "latency.md"
    run_quick("latency.py", out, "--round-to", "4")
    row, _ = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["network"] == "digits net, blocks of 4" and row["flops_factor"] >= 2.0
    # DigitsNet's three convolutions of 20 filters each keep a multiple of 4
    widths = row["conv_widths"]
    assert len(widths) == 3 and all(width % 4 == 0 for width in widths) and sum(widths) < 60, widths


def test_vs_torch_pruning_quick_run_prunes_every_method_to_the_target(tmp_path):
    out = tmp_path / "vs.md"
    run = run_quick("vs_torch_pruning.py", out)
    assert "Torch-Pruning 1." in run.stdout
    (seed,) = json.loads(out.with_suffix(".json").read_text())["seeds"]
    assert list(seed) == ["unpruned", "prunable_nn Taylor", "prunable_nn Taylor, FLOPs reg. 0.01",
                          "Torch-Pruning Taylor", "Torch-Pruning magnitude (L2)"]
    assert seed.pop("unpruned")["flops"] == 1.0
    for name, result in seed.items():
        assert 0.3 < result["flops"] <= 0.5, name  # stopped at the first round at or under the target
        assert result["rounds"] >= 1 and 0 < result["parameters"] < 1 and 0 <= result["accuracy"] <= 1
    rows = [line.split("|")[1].strip() for line in out.read_text().splitlines() if line.startswith("| ")]
    assert rows[2:] == ["unpruned", *seed]


def test_vs_torch_pruning_quick_run_with_rounding_keeps_whole_blocks_in_both_libraries(tmp_path):
    out = tmp_path / "vs.md"
    run_quick("vs_torch_pruning.py", out, "--round-to", "4")
    assert "up to 16 channels in blocks of 4, then" in out.read_text()
    (seed,) = json.loads(out.with_suffix(".json").read_text())["seeds"]
    for name in ("prunable_nn Taylor", "Torch-Pruning Taylor"):
        assert 0.3 < seed[name]["flops"] <= 0.5, name
        widths = seed[name]["conv_widths"]
        assert all(width % 4 == 0 for width in widths) and sum(widths) < 172, (name, widths)  # unpruned: 4..32


def test_criteria_curves_rankings_give_every_criterion_the_same_ranking():
    import criteria_curves
    from models import VGG

    def settings(*options: str) -> dict[str, tuple[str, bool, float]]:
        args = criteria_curves.main_parser().parse_args(list(options))
        made = criteria_curves.variants(args, 0, oracle_batches=[(torch.zeros(1, 1, 28, 28), torch.zeros(1).long())])
        pruners = {name: make(VGG("vgg11", 10, 1, 28, width=0.0625, hidden=16)) for name, make in made.items()}
        return {name: (type(p.criterion).__name__, p.normalize, p.flops_regularization) for name, p in pruners.items()}

    criteria = {"Taylor": "Taylor", "activation mean": "ActivationMean", "activation std": "ActivationStd",
                "APoZ": "APoZ", "minimum weight": "MinWeight", "random": "RandomScores"}
    assert settings() == {
        "Taylor": ("Taylor", True, 0.0), "Taylor, no L2": ("Taylor", False, 0.0),
        "Taylor, FLOPs reg. 0.01": ("Taylor", True, 0.01),
        **{name: (criterion, True, 0.0) for name, criterion in criteria.items() if name != "Taylor"},
    }
    assert settings("--ranking", "flops", "--flops-regularization", "0.02", "--oracle") == {
        **{name: (criterion, True, 0.02) for name, criterion in criteria.items()}, "oracle": ("Oracle", True, 0.02),
    }


class RecordingStream:
    """A stand-in for stdout that keeps every ``write`` call apart, as a pipe's system calls are."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        self.writes.append("<flush>")


def test_a_progress_line_is_one_write_so_lines_of_parallel_workers_never_run_together(monkeypatch):
    """The ``--jobs`` workers share the pipe: a line written in two pieces (``print`` writes
    text and newline apart) lets another worker's line in between, and a line goes missing."""
    import report

    stream = RecordingStream()
    monkeypatch.setattr(sys, "stdout", stream)
    report.say("  seed 1, APoZ: 4 rounds in 18 s")
    assert stream.writes == ["  seed 1, APoZ: 4 rounds in 18 s\n", "<flush>"]


def test_coverage_quick_run_tabulates_both_shares_and_the_frozen_reasons(tmp_path):
    out = tmp_path / "coverage.md"
    run_quick("coverage.py", out)
    rows = {cells[0].strip(): [cell.strip() for cell in cells[1:]]
            for cells in (line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| "))}
    numbers = json.loads(out.with_suffix(".json").read_text())["models"]
    assert list(numbers) == ["resnet10t", "cspresnet50", "r3d_18"]
    assert numbers["resnet10t"]["ours"] == 1.0 and rows["resnet10t"][0] == "100.0%"
    # cspnet splits its channels by sizes written in its code: those stay, and the table says why
    assert 0.3 < numbers["cspresnet50"]["ours"] < 0.8
    assert "split" in rows["cspresnet50"][3]
