"""The experiment scripts run, and what they print is true."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

WALKTHROUGH = os.path.join(REPO, "experiments", "emo_loss_walkthrough.ipynb")


@pytest.fixture(scope="module")
def executed_walkthrough(tmp_path_factory):
  """The notebook run top to bottom in a fresh kernel of this interpreter, plus one cell the
  test adds at the end that hands the notebook's numbers back as JSON."""
  import nbclient
  import nbformat
  from ipykernel.kernelspec import write_kernel_spec
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager

  # A kernel spec of this very interpreter, so a "python3" kernel installed elsewhere (a
  # user's ~/.local/share/jupyter) cannot stand in for the venv's.
  specs = tmp_path_factory.mktemp("kernels")
  write_kernel_spec(str(specs / "emo_jax_tests"))
  manager = KernelManager(
    kernel_name="emo_jax_tests", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)])
  )

  notebook = nbformat.read(WALKTHROUGH, as_version=4)
  notebook.cells.append(
    nbformat.v4.new_code_cell(
      "import json\nprint(json.dumps({'rows': rows, 'words': WORDS, 'gradients': "
      "{k: v.tolist() for k, v in gradients.items()}}))"
    )
  )
  nbclient.NotebookClient(
    notebook, km=manager, timeout=300, resources={"metadata": {"path": REPO + "/experiments"}}
  ).execute(env={**os.environ, "JAX_PLATFORMS": "cpu"})
  results = json.loads(notebook.cells[-1].outputs[0]["text"])
  return notebook, results


def test_walkthrough_is_committed_without_outputs():
  import nbformat

  notebook = nbformat.read(WALKTHROUGH, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_walkthrough_runs_and_its_claims_hold(executed_walkthrough):
  notebook, results = executed_walkthrough
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o["output_type"] == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)  # The DEMD-vs-CE figure.
  assert any(
    "| mass on | CE | DEMD |" in o.get("data", {}).get("text/markdown", "") for o in outputs
  )

  rows = {row["mass on"]: row for row in results["rows"]}
  # CE reads only p(target): identical in every row.
  np.testing.assert_allclose([r["CE"] for r in rows.values()], -np.log(0.4), rtol=1e-5)
  # DEMD: mass on near-synonyms costs less than mass on unrelated words.
  assert max(rows["large"]["DEMD"], rows["huge"]["DEMD"]) < min(
    rows["dog"]["DEMD"], rows["car"]["DEMD"]
  )
  # DEMD is the exact EMD of the linear program.
  for row in rows.values():
    assert row["DEMD"] == pytest.approx(row["EMD (LP)"], abs=1e-5)
  # EMO pushes the far word down harder than CE (relative to its probability) and spares
  # the near ones; MixCE/TaiLr gradients are multiples of CE's.
  grads = {name: np.asarray(g) for name, g in results["gradients"].items()}
  car, large = results["words"].index("car"), results["words"].index("large")
  ce, emo = grads["CE"], grads["EMO (mle weighting)"]
  assert emo[car] / ce[car] > emo[large] / ce[large]
  for name in ("MixCE (r=0.5)", "TaiLr (γ=0.5)"):
    ratio = grads[name] / ce
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)


# ----------------------------------------------------------------------------------------
# The study driver: commands and the report's statistics (the runs themselves are hours).
# ----------------------------------------------------------------------------------------

import provenance
import study_grid
import study_report

import study


def test_study_grid_commands(tmp_path):
  finetune = study.stage_commands("finetune", str(tmp_path))
  assert len(finetune) == len(study_grid.CORPORA) * len(study_grid.OBJECTIVES) * len(
    study_grid.SEEDS
  )
  command, marker = finetune[0]
  assert command[1].endswith("main.py") and "--config.data.corpus=wikitext2_raw_carved" in (command)
  assert marker.endswith(os.path.join("wikitext2_raw_carved", "mle", "seed0", "results.json"))
  evaluation = study.stage_commands(
    "eval", str(tmp_path), corpora=["ag_news"], objectives=["emo"], seeds=[1]
  )
  ((command, marker),) = evaluation
  assert "--mode" in command and "--config.loss.weighting=mle" in command
  assert marker.endswith("eval.json")
  with pytest.raises(ValueError, match="unknown stage"):
    study.stage_commands("plot", str(tmp_path))


def test_study_v2_starts_every_point_from_smollm2(tmp_path, capsys):
  # The "base" stage evaluates the untouched SmolLM2 on each corpus (nothing to pretrain).
  ((command, marker),) = study.stage_commands(
    "base", str(tmp_path), corpora=["ag_news"], setting="smollm2"
  )
  assert "--mode" in command and "--config.eval.model=smollm2-135m" in command
  assert "--config.data.corpus=ag_news" in command
  assert marker == os.path.join(
    study_grid.run_dir(str(tmp_path), "ag_news", "base", 0), "eval.json"
  )
  finetune = study.stage_commands(
    "finetune",
    str(tmp_path),
    setting="smollm2",
    corpora=["ag_news"],
    objectives=["mle", "emo"],
    seeds=[2],
  )
  assert len(finetune) == 2
  for command, marker in finetune:
    assert command[command.index("--config") + 1].endswith("smollm2_study.py")
    assert "--config.model.pretrained=smollm2-135m" in command
    assert "--config.seed=2" in command and marker.endswith("results.json")
  study.main(
    [
      "commands",
      "--setting",
      "smollm2",
      "--corpora",
      "ag_news",
      "--objectives",
      "emo",
      "--seeds",
      "0",
    ]
  )
  printed = capsys.readouterr().out.splitlines()
  # Train, then evaluate the point; the untouched base's evaluation comes last.
  assert len(printed) == 3 and "--mode eval" in printed[1]
  assert os.path.join("workdirs", "study_smollm2", "ag_news", "emo", "seed0") in printed[0]
  assert os.path.join("ag_news", "base", "seed0") in printed[2]


def _write_eval(root, objective, seed, mauve, perplexity):
  path = os.path.join(study_grid.run_dir(str(root), "ag_news", objective, seed), "eval.json")
  os.makedirs(os.path.dirname(path))
  with open(path, "w") as f:
    json.dump(
      {
        "perplexity": perplexity,
        "mauve": {"mean": mauve},
        "rouge": {"rougeL": 0.1},
        "repetition": {"rep-2": {"model": 0.05}},
      },
      f,
    )


def test_study_report_pairs_seeds_and_calls_wins_ties_losses(tmp_path):
  for seed, (base, noise) in enumerate([(0.50, 0.01), (0.60, -0.01), (0.55, 0.0)]):
    _write_eval(tmp_path, "mle", seed, base, 30.0 + seed)
    _write_eval(tmp_path, "emo", seed, base + 0.2 + noise, 31.0 + seed + noise)
    _write_eval(tmp_path, "tailr", seed, base + [0.05, -0.05, 0.0][seed], 30.0 + seed)
  table = study_report.collect(
    str(tmp_path), corpora=["ag_news"], objectives=["mle", "emo", "tailr"]
  )
  assert table["ag_news"]["emo"]["seeds"] == [0, 1, 2]
  report = study_report.markdown_report(table)
  emo_row = next(line for line in report.splitlines() if line.startswith("| emo |"))
  tailr_row = next(line for line in report.splitlines() if line.startswith("| tailr |"))
  # MAUVE +0.2 on every seed: a win; perplexity +1 on every seed: a loss (lower is better).
  assert "(win, p" in emo_row.split("|")[4] and "(loss, p" in emo_row.split("|")[3]
  assert "p=0.000" not in report
  assert "| 31.00 ± 0.82 |" in report.splitlines()[4]  # MLE perplexity: two decimals ...
  assert "| 0.0500 ± 0.0000 |" in report.splitlines()[4]  # ... rates: four.
  assert (study_report.format_p_value(0.0), study_report.format_p_value(0.0004)) == (
    "p<0.001",
    "p<0.001",
  )
  assert study_report.format_p_value(0.0421) == "p=0.042"
  assert "(tie" in tailr_row.split("|")[4]
  # MAUVE +0.05, -0.05 and +0 by seed: better on one seed, the equal one favours neither.
  assert tailr_row.split("|")[4].endswith(", better on 1/3) ")
  assert emo_row.split("|")[3].endswith(", better on 0/3) ")  # Perplexity up on every seed.
  assert study_report.paired_p_value([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]) == 0.0  # Constant shift.
  assert study_report.paired_p_value([1.0, 2.0], [1.0, 2.0]) is None  # No difference at all.


def test_study_v2_report_has_the_base_row_without_a_verdict(tmp_path, capsys):
  for seed in range(2):
    _write_eval(tmp_path, "mle", seed, 0.5 + seed / 10, 20.0 + seed)
    _write_eval(tmp_path, "emo", seed, 0.7 + seed / 10, 21.0 + seed)
  _write_eval(tmp_path, "base", 0, 0.3, 33.0)
  study.main(
    [
      "report",
      "--setting",
      "smollm2",
      "--root",
      str(tmp_path),
      "--corpora",
      "ag_news",
      "--objectives",
      "mle",
      "emo",
      "--seeds",
      "0",
      "1",
    ]
  )
  report = capsys.readouterr().out
  assert "Evaluated grid points: **4 of 4**" in report  # The base row is not a grid point.
  base_row = next(line for line in report.splitlines() if line.startswith("| base |"))
  assert base_row.startswith("| base | 1 | 33.00 ± 0.00 |") and "(" not in base_row
  emo_row = next(line for line in report.splitlines() if line.startswith("| emo | 2 |"))
  assert "(win, p<0.001, better on 2/2)" in emo_row.split("|")[4]  # MAUVE +0.2 per seed.
  # At a glance: the same verdicts, one row per metric.
  assert "| emo | MAUVE | win (2/2) |" in report and "| emo | perplexity | loss (0/2) |" in report


def test_study_passes_overrides_after_double_dash(capsys):
  study.main(
    [
      "commands",
      "finetune",
      "--corpora",
      "ag_news",
      "--objectives",
      "mle",
      "--seeds",
      "0",
      "--",
      "--config.train.num_steps=4",
    ]
  )
  (line,) = capsys.readouterr().out.strip().splitlines()
  assert line.endswith("--config.train.num_steps=4") and "--config.data.corpus=ag_news" in line


def test_study_report_writes_figures_timings_and_results_file(tmp_path):
  root = tmp_path / "study"
  for seed in range(2):
    for objective, mauve in (("mle", 0.5), ("emo", 0.7)):
      _write_eval(root, objective, seed, mauve + 0.01 * seed, 30.0)
      workdir = study_grid.run_dir(str(root), "ag_news", objective, seed)
      records = [
        {"step": 10, "train/loss": 3.0, "train/step_seconds": 9.0},  # Compiles.
        {"step": 20, "train/loss": 2.9, "train/step_seconds": 1.0 + seed},
        {"step": 25, "eval/perplexity": 40.0 - seed},
        {"step": 30, "train/loss": 2.8, "train/step_seconds": 50.0},  # Holds eval 25.
        {"step": 40, "train/loss": 2.7, "train/step_seconds": 1.0 + seed},
        {"step": 50, "eval/perplexity": 35.0 - seed},
      ]
      with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
      with open(root / "timings.jsonl", "a") as f:
        for marker, seconds in (("results.json", 120.0), ("eval.json", 60.0 * (1 + seed))):
          record = {"marker": os.path.join(workdir, marker), "seconds": seconds}
          if seed == 1:  # Pinned to one core; seed 0's records predate the field (2 cores).
            record["cores"] = 1
          f.write(json.dumps(record) + "\n")
  assert study_report.validation_curves(str(root), "ag_news", "emo") == {
    25: [40.0, 39.0],
    50: [35.0, 34.0],
  }
  # Median of 1, 1, 2, 2: neither the compiling interval (9) nor the one with an eval (50).
  assert study_report.step_seconds(str(root), "ag_news", "mle") == 1.5
  results = tmp_path / "RESULTS.md"
  results.write_text(
    f"# Results\nintro\n{study_report.BEGIN}\nold tables\n{study_report.END}\noutro\n"
  )
  study.main(
    [
      "report",
      "--root",
      str(root),
      "--corpora",
      "ag_news",
      "--objectives",
      "mle",
      "emo",
      "--seeds",
      "0",
      "1",
      "--figures",
      str(tmp_path / "figures"),
      "--update",
      str(results),
    ]
  )
  text = results.read_text()
  assert text.startswith("# Results\nintro\n") and text.endswith(f"{study_report.END}\noutro\n")
  assert "old tables" not in text and "| emo | 2 |" in text
  assert "Evaluated grid points: **4 of 4**" in text  # The grid asked for: 1 x 2 x 2.
  assert "![ag_news](figures/study_ag_news.png)" in text
  assert (tmp_path / "figures" / "study_ag_news.png").stat().st_size > 10_000
  # One row per core count, each with its own seeds' step times.
  assert "| finetune | ag_news | mle | 2 | 1 | 2.0 | 1.00 |" in text
  assert "| finetune | ag_news | mle | 1 | 1 | 2.0 | 2.00 |" in text
  assert "| eval | ag_news | emo | 2 | 1 | 1.0 |" in text
  assert "| eval | ag_news | emo | 1 | 1 | 2.0 |" in text
  # Another section (the GPU table) has its own markers and leaves this one alone.
  begin, end = study_report.markers("study_gpu")
  results.write_text(f"{text}{begin}\nold\n{end}\n")
  study_report.update_between_markers(str(results), "gpu table", section="study_gpu")
  assert results.read_text() == f"{text}{begin}\ngpu table\n{end}\n"
  results.write_text("no markers")
  with pytest.raises(ValueError, match="lacks the markers"):
    study_report.update_between_markers(str(results), "x")


def test_study_run_everything_evaluates_each_point_right_after_training(capsys):
  study.main(["commands", "--corpora", "ag_news", "--objectives", "mle", "emo", "--seeds", "0"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 5 and "study_base.py" in lines[0]
  kinds = ["eval" if "--mode eval" in line else "train" for line in lines[1:]]
  objectives = ["emo" if "loss.name=emo" in line else "mle" for line in lines[1:]]
  assert kinds == ["train", "eval", "train", "eval"]
  assert objectives == ["mle", "mle", "emo", "emo"]


def test_study_run_stage_logs_seconds_and_cores(tmp_path):
  done = tmp_path / "point" / "results.json"
  command = [sys.executable, "-c", f"open({str(done)!r}, 'w').close()"]
  done.parent.mkdir()
  study.run_stage([(command, str(done))], str(tmp_path))
  study.run_stage([(command, str(done))], str(tmp_path))  # Done already: not run again.
  (record,) = [json.loads(line) for line in open(tmp_path / "timings.jsonl")]
  assert record["marker"] == str(done) and record["seconds"] >= 0
  assert record["cores"] == len(os.sched_getaffinity(0))
  missing = tmp_path / "other" / "eval.json"  # Exits 0 without writing its marker.
  with pytest.raises(RuntimeError, match="did not write"):
    study.run_stage([([sys.executable, "-c", "pass"], str(missing))], str(tmp_path))


def _wait_for_heartbeat(path, seconds, timeout=60):
  """Until ``run_stage``'s command has run ``seconds`` (its heartbeat file says so)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if path.exists() and json.loads(path.read_text())["seconds"] > seconds:
      return
    time.sleep(0.2)
  raise TimeoutError(f"no heartbeat past {seconds} s in {path}")


def _run_stage_in_subprocess(done, root, command="import time; time.sleep(60)", grace=None):
  """A driver whose command (Python code) sleeps a minute by default, heartbeat every 0.5 s;
  ``grace``: its ``STOP_GRACE_SECONDS``."""
  script = (
    f"import sys; sys.path.insert(0, {os.path.join(REPO, 'experiments')!r}); import study; "
    + (f"study.child_process.STOP_GRACE_SECONDS = {grace}; " if grace is not None else "")
    + f"study.run_stage([([sys.executable, '-c', {command!r}], "
    f"{str(done)!r})], {str(root)!r}, heartbeat_seconds=0.5)"
  )
  return subprocess.Popen([sys.executable, "-c", script], start_new_session=True)


# A training run's shape: SIGTERM sets a flag; the step in flight ends, a checkpoint is
# written (slowly), then the run exits with the preempted status.
_SAVES_ON_SIGTERM = """
import signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
while not stop:
  time.sleep(0.05)
time.sleep(1.0)
open({saved!r}, "w").close()
sys.exit(143)
"""


def test_study_run_stage_records_a_sigterm_interrupted_command(tmp_path):
  done = tmp_path / "point" / "results.json"
  process = _run_stage_in_subprocess(done, tmp_path)
  _wait_for_heartbeat(done.parent / "results.json.in_flight.json", 1.0)  # Into the sleep.
  process.terminate()
  assert process.wait(timeout=30) != 0
  (record,) = [json.loads(line) for line in open(tmp_path / "timings.jsonl")]
  assert record["finished"] is False and record["seconds"] > 1
  assert not (done.parent / "results.json.in_flight.json").exists()  # Recorded once.


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_an_interrupted_driver_lets_its_command_save_before_it_exits(tmp_path, ignores_sigterm):
  done, saved = tmp_path / "point" / "results.json", tmp_path / "point" / "saved"
  command = _SAVES_ON_SIGTERM.format(saved=str(saved))
  if ignores_sigterm:  # A hung command: killed once the grace is over.
    command = command.replace("lambda *_: stop.append(True)", "signal.SIG_IGN")
  process = _run_stage_in_subprocess(done, tmp_path, command, grace=3.0)
  _wait_for_heartbeat(done.parent / "results.json.in_flight.json", 1.0)
  start = time.time()
  process.terminate()  # The driver only, as `kill <driver pid>` would.
  assert process.wait(timeout=30) != 0
  assert saved.exists() is not ignores_sigterm
  assert (time.time() - start > 2.5) is ignores_sigterm
  (record,) = [json.loads(line) for line in open(tmp_path / "timings.jsonl")]
  assert record["finished"] is False


def test_a_stopped_sweep_lets_its_running_command_save(tmp_path):
  saved = tmp_path / "saved"
  started = tmp_path / "started"
  command = f"open({str(started)!r}, 'w').close()\n" + _SAVES_ON_SIGTERM.format(saved=str(saved))
  script = (
    f"import sys; sys.path.insert(0, {os.path.join(REPO, 'experiments')!r}); import sweep; "
    f"sweep.run_all([[sys.executable, '-c', {command!r}], [sys.executable, '-c', 'never = 1']])"
  )
  process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
  deadline = time.time() + 60
  while not started.exists() and time.time() < deadline:
    time.sleep(0.05)
  process.terminate()  # The sweep only, as `kill <sweep pid>` would.
  assert process.wait(timeout=30) == 143
  assert saved.exists()  # The run saved before the sweep exited; the next run never started.


def test_study_run_stage_counts_a_sigkilled_invocation_from_its_heartbeat(tmp_path):
  done = tmp_path / "wikitext2_raw_carved" / "mle" / "seed0" / "results.json"
  process = _run_stage_in_subprocess(done, tmp_path)
  in_flight = done.parent / "results.json.in_flight.json"
  _wait_for_heartbeat(in_flight, 2.0)
  os.killpg(process.pid, signal.SIGKILL)  # Driver and command, as a lost machine would.
  process.wait(timeout=30)
  assert not (tmp_path / "timings.jsonl").exists()  # Nothing had a chance to record.

  finish = [sys.executable, "-c", f"open({str(done)!r}, 'w').close()"]
  study.run_stage([(finish, str(done))], str(tmp_path))
  killed, finished = [json.loads(line) for line in open(tmp_path / "timings.jsonl")]
  assert killed["finished"] is False and killed["killed"] is True
  assert 2 < killed["seconds"] < 10 and killed["cores"] == len(os.sched_getaffinity(0))
  assert "finished" not in finished and not in_flight.exists()
  (total,) = study_report.read_timings(str(tmp_path)).values()
  assert total[0] == pytest.approx(killed["seconds"] + finished["seconds"])


def test_read_timings_keeps_a_rerun_commands_latest_record(tmp_path):
  marker = study_grid.run_dir(str(tmp_path), "ag_news", "emo", 2) + "/results.json"
  with open(tmp_path / "timings.jsonl", "w") as f:
    f.write(json.dumps({"marker": marker, "seconds": 60.0}) + "\n")  # Predates "cores".
    f.write(json.dumps({"marker": marker, "seconds": 30.0, "cores": 1}) + "\n")
  assert study_report.read_timings(str(tmp_path)) == {("finetune", "ag_news", "emo", 1): {2: 30.0}}


def test_an_interrupted_point_counts_every_invocation(tmp_path):
  done = tmp_path / "wikitext2_raw_carved" / "mle" / "seed0" / "results.json"
  failing = [sys.executable, "-c", "import time, sys; time.sleep(0.2); sys.exit(143)"]
  with pytest.raises(subprocess.CalledProcessError):
    study.run_stage([(failing, str(done))], str(tmp_path))
  (unfinished,) = [json.loads(line) for line in open(tmp_path / "timings.jsonl")]
  assert unfinished["finished"] is False and unfinished["seconds"] >= 0.2
  assert study_report.read_timings(str(tmp_path)) == {}  # Nothing finished yet.
  resume = [sys.executable, "-c", f"open({str(done)!r}, 'w').close()"]
  study.run_stage([(resume, str(done))], str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "timings.jsonl")]
  cores = len(os.sched_getaffinity(0))
  (seconds,) = study_report.read_timings(str(tmp_path))[
    ("finetune", "wikitext2_raw_carved", "mle", cores)
  ].values()
  assert seconds == pytest.approx(records[0]["seconds"] + records[1]["seconds"])
  # A rerun after the marker was deleted starts the count again.
  with open(tmp_path / "timings.jsonl", "a") as f:
    f.write(json.dumps({"marker": str(done), "seconds": 5.0, "cores": cores}) + "\n")
  assert study_report.read_timings(str(tmp_path))[
    ("finetune", "wikitext2_raw_carved", "mle", cores)
  ] == {0: 5.0}


def test_read_timings_names_every_core_count_of_a_resumed_command(tmp_path):
  marker = study_grid.run_dir(str(tmp_path), "tokens100000", "mle", 0) + "/results.json"
  records = [
    {"marker": marker, "seconds": 60.0, "cores": 2, "finished": False},
    {"marker": marker, "seconds": 30.0, "cores": 1, "finished": False},
    {"marker": marker, "seconds": 10.0, "cores": 2},
  ]
  with open(tmp_path / "timings.jsonl", "w") as f:
    f.writelines(json.dumps(record) + "\n" for record in records)
  key = ("finetune", "tokens100000", "mle", "1+2")
  assert study_report.read_timings(str(tmp_path)) == {key: {0: 100.0}}
  report = study_report.timings_report(str(tmp_path), {"tokens100000": {"mle": {}}})
  assert "| finetune | tokens100000 | mle | 1+2 | 1 | 1.7 |" in report


@pytest.mark.slow
def test_study_v2_point_evaluations_cover_the_issues_models(tmp_path):
  root = str(tmp_path)
  decoding = study.stage_commands("decoding", root, setting="smollm2")
  # Every objective on WikiText-2 raw, every seed, each temperature; no more.
  assert len(decoding) == 5 * len(study_grid.SEEDS) * len(study_grid.TEMPERATURES)
  command, marker = decoding[0]
  workdir = study_grid.run_dir(root, "wikitext2_raw_carved", "mle", 0)
  assert f"--config.eval.model={workdir}/hf_export" in command
  assert "--config.eval.temperature=0.7" in command and "--mode" in command
  assert marker == os.path.join(workdir, "decoding", "T0.70", "eval.json")
  fewshot = study.stage_commands("fewshot", root, setting="smollm2")
  models = [command[-1] for command, _ in fewshot]
  # The base once, then MLE, EMO and EMO-DEMD fine-tuned on WikiText-2 raw, every seed.
  assert len(fewshot) == 3 * len(study_grid.SEEDS) + 1
  assert models[-1] == "base=smollm2-135m" and models[0] == f"mle={workdir}/hf_export"
  assert all(marker.endswith("fewshot.json") for _, marker in fewshot)
  with pytest.raises(ValueError, match="no decoding stage"):
    study.stage_commands("decoding", root)  # The CPU study has none.


def test_study_v2_runs_each_point_whole_then_the_base(capsys):
  study.main(["commands", "--setting", "smollm2", "--corpora", "wikitext2_raw_carved"])
  lines = capsys.readouterr().out.strip().splitlines()
  first_point = lines[:6]
  assert "--mode eval" not in first_point[0] and "--mode eval" in first_point[1]
  assert all("temperature" in line for line in first_point[2:5])
  assert "fewshot.py" in first_point[5] and "mle/seed0" in first_point[5]
  assert "base/seed0" in lines[-2] and "base=smollm2-135m" in lines[-1]


def test_study_smoke_and_another_base_change_commands_not_the_archive(capsys):
  grid = ["--setting", "smollm2", "--corpora", "ag_news", "--objectives", "emo", "--seeds", "0"]
  study.main(["commands", *grid, "--smoke", "--pretrained", "/models/other"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3  # Train, evaluate; the base's evaluation.
  assert all("smollm2_study.py:smoke" in line and "study_smollm2_smoke" in line for line in lines)
  assert all("--config.eval.cost_model=/models/other" in line for line in lines)
  assert "--config.model.pretrained=/models/other" in lines[0]
  assert "--config.eval.model=/models/other" in lines[2]
  with pytest.raises(SystemExit):  # The CPU study pretrains its own base.
    study.main(["commands", "--setting", "cpu", "--pretrained", "/models/other"])
  assert "pretrains its own base" in capsys.readouterr().err


@pytest.mark.slow
def test_study_v2_smoke_run_on_a_tiny_llama_covers_every_stage(tmp_path, data_dir, capsys):
  del data_dir  # The subprocesses read the corpora through EMO_JAX_DATA, which it checks.
  """``run --smoke --pretrained``: a tiny random LLaMA in SmolLM2's place, one WikiText point
  (fine-tune, evaluate, three temperatures, few-shot) and the base's row, archived, then the
  report rebuilt from the archive alone."""
  _save_tiny_llama(tmp_path / "tiny_llama")
  root, archive, corpus = tmp_path / "root", tmp_path / "archive", "wikitext2_raw_carved"
  grid = ["--setting", "smollm2", "--corpora", corpus, "--objectives", "emo", "--seeds", "0"]
  study.main(
    ["run", *grid, "--smoke", "--pretrained", str(tmp_path / "tiny_llama"), "--root", str(root)]
    + ["--archive", str(archive)]
  )
  point = study_grid.run_dir(str(archive), corpus, "emo", 0)
  assert sorted(json.load(open(os.path.join(point, "point.json")))["files"]) == sorted(
    [
      "eval.json",
      "metrics.jsonl",
      "best_metric.json",
      "fewshot.json",
      *(os.path.join("decoding", f"T{t:.2f}", "eval.json") for t in study_grid.TEMPERATURES),
      "timings.jsonl",
    ]
  )
  evaluation = json.load(open(os.path.join(point, "eval.json")))
  assert evaluation["demd_cost"].startswith(str(tmp_path / "tiny_llama"))  # Not SmolLM2's head.
  capsys.readouterr()
  study.main(["report", *grid, "--root", str(archive)])
  printed = capsys.readouterr().out
  assert "Evaluated grid points: **1 of 1**." in printed
  assert "| base | 1 |" in printed and "| emo | 1 |" in printed
  assert "decoding temperature" in printed and "| emo | 0 | 4 |" in printed  # 4 queries.
  timings = study_report.read_timings(str(archive))
  assert {key[0] for key in timings} >= {"finetune", "eval", "fewshot", "decoding T0.70"}


def _save_tiny_llama(path, seed=0) -> str:
  """A random two-layer LLaMA saved as an HF directory without tokenizer files (the packaged
  GPT-2 BPE stands in, hence its vocabulary); room for eight few-shot demonstrations."""
  import torch
  import transformers

  torch.manual_seed(seed)
  config = transformers.LlamaConfig(
    vocab_size=50257,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
  )
  transformers.LlamaForCausalLM(config).save_pretrained(str(path))
  return str(path)


def _finished_point(root, corpus="wikitext2_raw_carved", objective="mle", seed=0):
  workdir = study_grid.run_dir(str(root), corpus, objective, seed)
  os.makedirs(os.path.join(workdir, "decoding", "T0.70"))
  os.makedirs(os.path.join(workdir, "checkpoints"))
  record = {"perplexity": 19.0, "mauve": {"mean": 0.4}, "rouge": {"rougeL": 0.13}}
  record["repetition"] = {"rep-2": {"model": 0.02, "human": 0.04}}
  for name in ("eval.json", os.path.join("decoding", "T0.70", "eval.json")):
    with open(os.path.join(workdir, name), "w") as f:
      json.dump(record, f)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 10, "eval/perplexity": 20.0}) + "\n")
  with open(os.path.join(workdir, "fewshot.json"), "w") as f:
    json.dump({objective: {"tasks": {}}}, f)
  with open(os.path.join(workdir, "checkpoints", "weights"), "wb") as f:
    f.write(b"0" * 1000)
  with open(os.path.join(root, "timings.jsonl"), "a") as f:
    for name, seconds in [
      ("results.json", 600.0),
      ("eval.json", 300.0),
      (os.path.join("decoding", "T0.70", "eval.json"), 200.0),
      ("fewshot.json", 100.0),
    ]:
      marker = os.path.join(workdir, name)
      f.write(json.dumps({"marker": marker, "seconds": seconds, "cores": 2}) + "\n")
    other = study_grid.run_dir(str(root), corpus, objective, seed + 1)  # Another point's record.
    f.write(json.dumps({"marker": f"{other}/results.json", "seconds": 1.0, "cores": 2}) + "\n")
  return workdir


def test_archived_points_rebuild_the_report_without_workdirs(tmp_path, capsys, monkeypatch):
  root, archive = tmp_path / "workdirs", tmp_path / "archive"
  root.mkdir()
  _finished_point(root)
  files = study.archive_point(str(root), str(archive), "wikitext2_raw_carved", "mle", 0, "mycommit")
  assert sorted(files) == sorted(
    [
      "eval.json",
      "metrics.jsonl",
      "fewshot.json",
      os.path.join("decoding", "T0.70", "eval.json"),
      "timings.jsonl",
    ]
  )
  archived = study_grid.run_dir(str(archive), "wikitext2_raw_carved", "mle", 0)
  assert not os.path.exists(os.path.join(archived, "checkpoints"))  # Weights stay behind.
  assert json.load(open(os.path.join(archived, "point.json")))["commit"] == "mycommit"
  assert study.is_archived(str(archive), "wikitext2_raw_carved", "mle", 0)
  # Only this point's timings, with markers relative to the root.
  records = [json.loads(line) for line in open(os.path.join(archived, "timings.jsonl"))]
  assert len(records) == 4 and not any(os.path.isabs(r["marker"]) for r in records)
  timings = study_report.read_timings(str(archive))
  assert timings == {
    ("finetune", "wikitext2_raw_carved", "mle", 2): {0: 600.0},
    ("eval", "wikitext2_raw_carved", "mle", 2): {0: 300.0},
    ("decoding T0.70", "wikitext2_raw_carved", "mle", 2): {0: 200.0},
    ("fewshot", "wikitext2_raw_carved", "mle", 2): {0: 100.0},
  }
  table = study_report.collect(str(archive), ["wikitext2_raw_carved"], ["mle"], [0])
  assert table["wikitext2_raw_carved"]["mle"]["perplexity"] == [19.0]
  assert study_report.validation_curves(str(archive), "wikitext2_raw_carved", "mle") == {10: [20.0]}
  # Not a commit of this repository: listed as recorded.
  assert study_report.archived_commits(str(archive), table) == {"mycommit": 1}
  assert "then how many points it wrote): `mycommit` (1)." in study_report.full_report(
    str(archive), table
  )
  # A run skips an archived point entirely (its workdir may be gone) and archives the rest.
  ran, archived_points = [], []
  monkeypatch.setattr(study, "run_stage", lambda commands, root: ran.append(commands))
  monkeypatch.setattr(
    study, "archive_point", lambda *args, **kwargs: archived_points.append(args[2:5])
  )
  study.main(
    [
      "run",
      "--setting",
      "smollm2",
      "--root",
      str(tmp_path / "elsewhere"),
      "--archive",
      str(archive),
      "--corpora",
      "wikitext2_raw_carved",
      "--objectives",
      "mle",
      "--seeds",
      "0",
    ]
  )
  # The grid's T = 0.85 and 1.15 runs are not archived, and this root cannot make them
  # without training the point again: skipped, its archive left alone.
  out = capsys.readouterr().out
  assert f"lacks {os.path.join('decoding', 'T0.85', 'eval.json')}" in out
  assert "would first have to remake results.json, eval.json" in out
  assert archived_points == [("wikitext2_raw_carved", "base", 0)] and len(ran) == 1
  monkeypatch.undo()
  with pytest.raises(FileNotFoundError, match="no eval.json"):
    study.archive_point(str(root), str(archive), "ag_news", "mle", 0, "abc")


def test_current_commit_marks_uncommitted_or_new_code_but_not_prose_or_study_outputs(tmp_path):
  repo = str(tmp_path / "repo")
  files = {"lib.py": "x = 1\n", "notes.md": "a\n", "experiments/results/p.json": "{}\n"}
  for name, text in files.items():
    os.makedirs(os.path.dirname(os.path.join(repo, name)), exist_ok=True)
    with open(os.path.join(repo, name), "w") as f:
      f.write(text)
  git = ["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(["git", "init", "-q", repo], check=True)
  subprocess.run([*git, "add", "."], check=True)
  subprocess.run([*git, "commit", "-qm", "c"], check=True)
  head = subprocess.run(
    [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
  ).stdout.strip()
  assert provenance.current_commit(repo) == head
  for name in ("notes.md", "experiments/results/p.json"):  # Written while the study runs.
    with open(os.path.join(repo, name), "a") as f:
      f.write("more\n")
  assert provenance.current_commit(repo) == head
  with open(os.path.join(repo, "draft.md"), "w") as f:  # New prose: still clean.
    f.write("b\n")
  assert provenance.current_commit(repo) == head
  with open(os.path.join(repo, "new_module.py"), "w") as f:  # New code that may be imported.
    f.write("y = 1\n")
  assert provenance.current_commit(repo) == f"{head}-dirty"
  os.remove(os.path.join(repo, "new_module.py"))
  with open(os.path.join(repo, "lib.py"), "a") as f:
    f.write("x = 2\n")
  assert provenance.current_commit(repo) == f"{head}-dirty"
  with open(os.path.join(repo, ".git", "index"), "w") as f:  # git cannot compare: say so.
    f.write("damaged")
  assert provenance.current_commit(repo) == f"{head}-unchecked"
  os.makedirs(tmp_path / "plain")
  assert provenance.current_commit(str(tmp_path / "plain")) == "unknown"


def test_code_commit_names_the_newest_commit_that_changed_code(tmp_path):
  repo = str(tmp_path / "repo")
  git = ["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(["git", "init", "-q", repo], check=True)

  def commit(name, text):
    os.makedirs(os.path.dirname(os.path.join(repo, name)), exist_ok=True)
    with open(os.path.join(repo, name), "w") as f:
      f.write(text)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", name], check=True)
    return subprocess.run(
      [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()

  code = commit("lib.py", "x = 1\n")
  results = commit("experiments/results/p.json", "{}\n")  # The study's own commits.
  prose = commit("experiments/RESULTS.md", "table\n")
  assert provenance.code_commit(results, repo) == code
  assert provenance.code_commit(f"{prose}-dirty", repo) == f"{code}-dirty"
  newer = commit("lib.py", "x = 2\n")
  assert provenance.code_commit(newer, repo) == newer
  assert provenance.code_commit(prose, repo) == code  # History before the new code stands.
  for unresolvable in ("unknown", "0" * 40, f"{'0' * 40}-dirty"):
    assert provenance.code_commit(unresolvable, repo) == unresolvable


def test_run_point_prunes_periodic_checkpoints_only_once_the_point_is_archived(
  tmp_path, capsys, monkeypatch
):
  root, archive = tmp_path / "workdirs", tmp_path / "archive"
  point = ("wikitext2_raw_carved", "mle", 0)
  workdir = _finished_point(root)
  for name in ("checkpoints/60/state", "best/60/params"):
    os.makedirs(os.path.join(workdir, name))
    with open(os.path.join(workdir, name, "weights"), "wb") as f:
      f.write(b"w" * 1000)
  failing = [([sys.executable, "-c", "raise SystemExit(3)"], str(tmp_path / "never"))]
  with pytest.raises(subprocess.CalledProcessError):  # A failed point is neither archived...
    study.run_point(str(root), str(archive), point, failing, prune_checkpoints=True)
  assert os.path.isdir(os.path.join(workdir, "checkpoints"))  # ... nor pruned.
  study.run_point(str(root), None, point, [], prune_checkpoints=True)  # No archive.
  assert os.path.isdir(os.path.join(workdir, "checkpoints"))

  commits = iter(["at the point's start", "later"])
  monkeypatch.setattr(study, "current_commit", lambda: next(commits))
  study.run_point(str(root), str(archive), point, [], prune_checkpoints=True)
  assert study.is_archived(str(archive), *point)
  archived = study_grid.run_dir(str(archive), *point)
  assert json.load(open(os.path.join(archived, "point.json")))["commit"] == "at the point's start"
  assert sorted(os.listdir(os.path.join(workdir, "best", "60"))) == ["params"]
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  assert "pruned: 0.0 GiB" in capsys.readouterr().out


@pytest.mark.parametrize(
  "name, archived",
  [
    ("eval.json", True),
    (os.path.join("decoding", "T0.85", "eval.json"), True),
    # fnmatch's "*" would cross the separator here; archive_point's glob does not.
    (os.path.join("decoding", "T0.85", "extra", "eval.json"), False),
    (os.path.join("best", "eval.json"), False),
    ("results.json", False),
  ],
)
def test_archived_names_follow_the_archives_glob(tmp_path, name, archived):
  assert study._archived_name(name) is archived
  path = tmp_path / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("{}")
  globbed = {
    os.path.relpath(found, tmp_path)
    for pattern in study.ARCHIVED_FILES
    for found in glob.glob(os.path.join(tmp_path, pattern))
  }
  assert (name in globbed) is archived


def test_an_archived_point_gains_the_evaluations_the_grid_added(tmp_path, capsys, monkeypatch):
  root, archive = tmp_path / "workdirs", tmp_path / "archive"
  point = ("wikitext2_raw_carved", "tailr", 0)
  workdir = _finished_point(root, *point[:2])
  study.archive_point(str(root), str(archive), *point, commit="trained")
  archived = study_grid.run_dir(str(archive), *point)
  records_before = open(os.path.join(archived, "timings.jsonl")).read()
  with open(os.path.join(workdir, "results.json"), "w") as f:
    f.write("{}")
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    f.write('{"changed": "in the workdir since"}')
  new = os.path.join("decoding", "T0.85", "eval.json")
  write = "import json, sys; json.dump({'perplexity': 19.0}, open(sys.argv[1], 'w'))"
  commands = [
    ([sys.executable, "-c", "raise SystemExit('trained again')"], f"{workdir}/results.json"),
    ([sys.executable, "-c", "raise SystemExit('evaluated again')"], f"{workdir}/eval.json"),
    ([sys.executable, "-c", write, os.path.join(workdir, new)], os.path.join(workdir, new)),
  ]
  assert study.archive_gaps(str(root), str(archive), point, commands) == [new]
  # An addition cut short after copying its file, before point.json lists it: still a gap.
  os.makedirs(os.path.dirname(os.path.join(archived, new)))
  with open(os.path.join(archived, new), "w") as f:
    f.write("{}")
  assert study.archive_gaps(str(root), str(archive), point, commands) == [new]
  monkeypatch.setattr(study, "current_commit", lambda: "decoded")
  study.run_point(str(root), str(archive), point, commands)
  assert f"added to {archived}: {new}" in capsys.readouterr().out
  assert json.load(open(os.path.join(archived, new))) == {"perplexity": 19.0}
  assert json.load(open(os.path.join(archived, "eval.json")))["perplexity"] == 19.0  # Kept.
  summary = json.load(open(os.path.join(archived, "point.json")))
  assert summary["commit"] == "trained" and summary["added"] == [
    {"commit": "decoded", "files": [new]}
  ]
  assert new in summary["files"]
  records = open(os.path.join(archived, "timings.jsonl")).read()
  assert records.startswith(records_before)
  added = [json.loads(line) for line in records[len(records_before) :].splitlines()]
  assert [record["marker"] for record in added] == [os.path.relpath(commands[2][1], root)]
  table = study_report.collect(str(archive), [point[0]], [point[1]], [0])
  assert study_report.archived_commits(str(archive), table) == {"trained": 1, "decoded": 1}
  study.run_point(str(root), str(archive), point, commands)  # Complete now: skipped.
  assert "archived already" in capsys.readouterr().out
  # A workdir without its trained model cannot make an addition: skipped, nothing run.
  os.remove(os.path.join(workdir, "results.json"))
  later = os.path.join("decoding", "T1.15", "eval.json")
  commands[2] = ([sys.executable, "-c", write, os.path.join(workdir, later)], commands[2][1])
  commands.append(commands[2][:1] + (os.path.join(workdir, later),))
  study.run_point(str(root), str(archive), point, commands)
  assert "would first have to remake results.json: skipped" in capsys.readouterr().out
  assert not os.path.exists(os.path.join(workdir, later))
  with pytest.raises(FileNotFoundError, match="not in"):
    study.archive_point(str(root), str(archive), *point, "decoded", only=[later])


def _write_json(path, record):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(record, f)


def _eval_record(mauve, rep2, perplexity=19.0, demd=0.5):
  return {
    "perplexity": perplexity,
    "mean_demd": demd,
    "mauve": {"mean": mauve},
    "rouge": {"rougeL": 0.1},
    "repetition": {"rep-2": {"model": rep2, "human": 0.04}},
  }


def test_glance_table_lists_each_objective_metric_by_corpus(tmp_path):
  root = str(tmp_path)
  # WikiText: TaiLr on three seeds, MixCE on one; AG News: TaiLr only, no MixCE at all.
  runs = {
    ("wikitext2_raw_carved", "mle"): (0, 1, 2),
    ("wikitext2_raw_carved", "tailr"): (0, 1, 2),
    ("wikitext2_raw_carved", "mixce"): (0,),
    ("ag_news", "mle"): (0, 1, 2),
    ("ag_news", "tailr"): (0, 1, 2),
  }
  for (corpus, objective), seeds in runs.items():
    for seed in seeds:
      worse = objective != "mle"  # Higher perplexity on every seed; MAUVE up on two of three.
      record = _eval_record(0.4 + 0.01 * seed + 0.01 * (worse and seed != 1), 0.03)
      record["perplexity"] = 19.0 + seed + (0.5 + 0.1 * seed if worse else 0.0)
      _write_json(
        os.path.join(study_grid.run_dir(root, corpus, objective, seed), "eval.json"), record
      )
  table = study_report.collect(
    root, ["wikitext2_raw_carved", "ag_news"], ["base", "mle", "tailr", "mixce"]
  )
  rows = {
    tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")[3:5]
    for line in study_report.glance_report(table).splitlines()
    if line.startswith(("| tailr", "| mixce"))
  }
  assert [cell.strip() for cell in rows[("tailr", "perplexity")]] == ["loss (0/3)"] * 2
  assert rows[("tailr", "MAUVE")][0].strip() == "tie (2/3)"  # +0.01, +0, +0.01: p = 0.18.
  assert rows[("tailr", "mean DEMD")][0].strip() == "tie"  # Equal on every seed: no test.
  assert [cell.strip() for cell in rows[("mixce", "perplexity")]] == ["1 pair, untested", "–"]
  assert "| wikitext2_raw_carved | ag_news |" in study_report.glance_report(table)
  assert study_report.glance_report({"ag_news": {"mle": table["ag_news"]["mle"]}}) == ""


def test_rep2_verdict_is_the_distance_to_the_human_rate(tmp_path):
  root, corpus = str(tmp_path), "wikitext2_raw_carved"
  # Human rate 0.04: MLE repeats too little, EMO about as much as people, TaiLr far too much.
  rates = {"mle": 0.025, "emo": 0.039, "tailr": 0.070}
  for objective, rate in rates.items():
    for seed in (0, 1, 2):
      record = _eval_record(0.4, rep2=rate + 0.001 * seed)
      _write_json(
        os.path.join(study_grid.run_dir(root, corpus, objective, seed), "eval.json"), record
      )
  report = study_report.markdown_report(study_report.collect(root, [corpus], list(rates)))
  assert "Human continuations' rep-2: 0.0400." in report
  assert "rep-2 (nearer the human rate wins)" in report
  rows = {line.split(" | ")[0].strip("| "): line for line in report.splitlines() if "|" in line}
  assert (
    "0.0400 ± 0.0008 (win, p=0.002, better on 3/3)" in rows["emo"]
  )  # Higher than MLE, yet nearer.
  assert "0.0710 ± 0.0008 (loss, p=" in rows["tailr"]
  one_seed = study_report.markdown_report(
    study_report.collect(root, [corpus], list(rates), seeds=[0])
  )
  assert "| emo | 1 | 19.00 ± 0.00 (1 pair, untested) |" in one_seed  # No verdict from one.
  # Records without the human rate (the CPU study's) get no rep-2 verdict at all.
  for seed in (0, 1, 2):
    path = os.path.join(study_grid.run_dir(root, corpus, "emo", seed), "eval.json")
    record = json.load(open(path))
    del record["repetition"]["rep-2"]["human"]
    _write_json(path, record)
  rows = study_report.markdown_report(
    study_report.collect(root, [corpus], list(rates))
  ).splitlines()
  assert next(line for line in rows if line.startswith("| emo")).endswith(
    "| 0.0400 ± 0.0008 | 0.5000 ± 0.0000 (tie) |"
  )


def test_study_v2_report_decoding_fewshot_and_summary(tmp_path, capsys):
  root, corpus = str(tmp_path / "archive"), "wikitext2_raw_carved"
  # MAUVE by temperature: MLE peaks at 0.85, EMO at 1.0 and is higher there on every seed.
  curves = {"mle": {0.7: 0.30, 0.85: 0.40, 1.0: 0.35, 1.15: 0.20}}
  curves["emo"] = {0.7: 0.25, 0.85: 0.40, 1.0: 0.50, 1.15: 0.30}
  for objective, by_temperature in curves.items():
    for seed in (0, 1, 2):
      for temperature, mauve in by_temperature.items():
        directory = (
          study_grid.run_dir(root, corpus, objective, seed)
          if temperature == 1.0
          else study_grid.decoding_dir(root, corpus, objective, seed, temperature)
        )
        record = _eval_record(mauve + 0.01 * seed, rep2=0.1 - 0.05 * temperature)
        _write_json(os.path.join(directory, "eval.json"), record)
      _write_json(
        os.path.join(study_grid.run_dir(root, corpus, objective, seed), "best_metric.json"),
        {"step": 50 + seed, "eval/perplexity": 18.0},
      )
      # Few-shot: EMO gets query 0 right where MLE does not, on every seed.
      correct = [objective == "emo", True, False, True]
      result = {"accuracy": float(np.mean(correct)), "low": 0.1, "high": 0.9, "correct": correct}
      _write_json(
        os.path.join(study_grid.run_dir(root, corpus, objective, seed), "fewshot.json"),
        {objective: {"tasks": {"sst2": result}}},
      )
  decoding_table = study_report.decoding_table(root, corpus)
  assert study_report.best_temperature(decoding_table["mle"]) == 0.85
  assert study_report.best_temperature(decoding_table["emo"]) == 1.0
  report = study_report.decoding_report(decoding_table, corpus)
  table = study_report.collect(root, [corpus], ["mle", "emo"])
  glance = study_report.glance_report(table, {corpus: decoding_table})
  assert "| emo | MAUVE, each at its best T | win (3/3) |" in glance
  assert "| mle | 3 | 0.310 ± 0.008 / 0.065 |" in report
  assert (
    "emo vs mle MAUVE: 0.510 vs 0.410 over 3 paired seeds — win, p<0.001, better on 3/3." in report
  )
  one_seed = study_report.decoding_report(  # One pair: no verdict.
    study_report.decoding_table(root, corpus, seeds=[0]), corpus
  )
  assert "over 1 paired seed — 1 pair, untested." in one_seed and "tie" not in one_seed
  fewshot = study_report.fewshot_report(root)
  assert "| emo | 2 | 4 | 0.750 [0.100, 0.900] | +1 / -0 (p=1.000) |" in fewshot
  assert "| mle | 0 | 4 | 0.500 [0.100, 0.900] | — |" in fewshot

  study.main(
    [
      "report",
      "--setting",
      "smollm2",
      "--root",
      root,
      "--corpora",
      corpus,
      "--objectives",
      "mle",
      "emo",
      "--summary",
      str(tmp_path / "summary.json"),
      "--figures",
      str(tmp_path / "figures"),
    ]
  )
  printed = capsys.readouterr().out
  assert "decoding temperature" in printed and "Few-shot sst2" in printed
  figure = tmp_path / "figures" / f"decoding_{corpus}.png"
  assert f"]({figure})" in printed and figure.stat().st_size > 10_000
  assert decoding_table["mle"][0.7]["human rep-2"] == [0.04] * 3
  assert "| mean DEMD |" in printed and "0.5000 ± 0.0000 (tie)" in printed
  summary = json.load(open(tmp_path / "summary.json"))
  point = summary["points"][corpus]["emo"]["2"]
  assert point["best step"] == 52 and point["MAUVE"] == pytest.approx(0.52)
  assert point["decoding"]["0.85"]["MAUVE"] == pytest.approx(0.42)
  assert summary["fewshot_accuracy"]["sst2"]["mle"] == {"0": 0.5, "1": 0.5, "2": 0.5}


def test_data_scale_points_train_one_epoch_of_nested_budgets(tmp_path):
  import data_scale

  from configs import smollm2_study
  from emo_jax import config_checks

  # 25k tokens: 98 blocks of 256, 12 batches of 8; 240k: 938 blocks, 117 batches.
  assert [data_scale.steps_per_epoch(b) for b in data_scale.BUDGETS] == [12, 48, 117]
  commands = data_scale.point_commands(str(tmp_path), 25_000, "emo", 1)
  (train_command, trained), (eval_command, evaluated), (fewshot_command, scored) = commands
  workdir = os.path.join(str(tmp_path), "tokens25000", "emo", "seed1")
  assert trained == os.path.join(workdir, "results.json")
  assert evaluated == os.path.join(workdir, "eval.json") and "--mode" in eval_command
  assert scored == os.path.join(workdir, "fewshot.json")
  assert f"emo={os.path.join(workdir, 'hf_export')}" in fewshot_command
  overrides = dict(a.removeprefix("--config.").split("=", 1) for a in train_command if "=" in a)
  assert overrides["data.max_train_tokens"] == "25000" and overrides["train.num_epochs"] == "1"
  assert overrides["train.eval_every"] == "2" and overrides["loss.weighting"] == "mle"
  fields = config_checks.leaves(smollm2_study.get_config())
  assert set(overrides) <= set(fields)  # Every override names a field (a typo would not run).


def test_data_scale_budgets_fit_the_corpus(data_dir):
  """The largest budget must fit the training split as the study's model tokenizes and packs
  it (a budget beyond it fails only when its point starts, hours into a run)."""
  import data_scale

  from emo_jax.data import corpora, input_pipeline
  from emo_jax.data.tokenizer import load_tokenizer

  config = data_scale._STUDY_CONFIG
  documents = corpora.wikitext2_raw_carved("train", data_dir)
  blocks = input_pipeline.tokenize_and_pack(
    documents, load_tokenizer(data_scale.PRETRAINED), config.data.block_size
  )
  available = int(input_pipeline.target_tokens(blocks).sum())
  assert max(data_scale.BUDGETS) <= available


def test_data_scale_report_from_archived_points(tmp_path, capsys):
  import data_scale

  root, study_archive = tmp_path / "scale", tmp_path / "study"

  def write_point(directory, objective, perplexity, agnews, step):
    _write_json(os.path.join(directory, "eval.json"), _eval_record(0.4, 0.03, perplexity))
    _write_json(os.path.join(directory, "best_metric.json"), {"step": step})
    # Ten AG News queries; EMO's right answers are MLE's plus one more (at 25k and 100k).
    correct = [i < round(agnews * 10) for i in range(10)]
    tasks = {
      "ag_news": {"accuracy": agnews, "correct": correct, "low": agnews - 0.2, "high": 0.9},
      "sst2": {"accuracy": 0.7, "correct": [True] * 7 + [False] * 3, "low": 0.4, "high": 0.9},
    }
    tasks["ag_news"]["predictions"] = [2] * 10
    tasks["sst2"]["predictions"] = [1] * 8 + [0] * 2
    _write_json(os.path.join(directory, "fewshot.json"), {objective: {"tasks": tasks}})

  for objective, offset in (("mle", 0.0), ("emo", 1.0)):
    for budget, perplexity in ((25_000, 30.0), (100_000, 25.0)):
      directory = study_grid.run_dir(str(root), data_scale.group(budget), objective, 0)
      write_point(directory, objective, perplexity + offset, 0.4 + offset / 10, 12)
    for seed in (0, 1):  # The study's own points, two seeds.
      directory = study_grid.run_dir(str(study_archive), data_scale.CORPUS, objective, seed)
      write_point(directory, objective, 19.0 + seed + offset, 0.5, 60)
  write_point(
    study_grid.run_dir(str(study_archive), data_scale.CORPUS, "base", 0), "base", 37.0, 0.52, 0
  )

  # The calibrated rescoring of the base and the 25k points: MLE's scored predictions as
  # archived, EMO's one query off; calibration helps EMO on AG News by two queries.
  def rescored(predictions, correct, calibrated_correct):
    def accuracy(outcomes):
      return {"accuracy": float(np.mean(outcomes)), "correct": outcomes}

    return {
      "predictions": predictions,
      **accuracy(correct),
      "calibrated": accuracy(calibrated_correct),
    }

  sst2 = rescored([1] * 8 + [0] * 2, [True] * 7 + [False] * 3, [True] * 7 + [False] * 3)
  _write_json(
    os.path.join(str(root), data_scale.CALIBRATED_FILE),
    {
      "base": {
        "tasks": {
          "ag_news": rescored([2] * 10, [True] * 5 + [False] * 5, [True] * 6 + [False] * 4),
          "sst2": sst2,
        }
      },
      "mle_25k": {
        "tasks": {
          "ag_news": rescored([2] * 10, [True] * 4 + [False] * 6, [True] * 4 + [False] * 6),
          "sst2": sst2,
        }
      },
      "emo_25k": {
        "tasks": {
          "ag_news": rescored([1] + [2] * 9, [True] * 5 + [False] * 5, [True] * 7 + [False] * 3),
          "sst2": sst2,
        }
      },
    },
  )
  results = tmp_path / "RESULTS.md"
  results.write_text(
    "kept\n<!-- smollm2_data_scale:begin -->\nold\n<!-- smollm2_data_scale:end -->\n"
  )
  data_scale.main(
    [
      "report",
      "--root",
      str(root),
      "--study_archive",
      str(study_archive),
      "--figure",
      str(tmp_path / "scale.png"),
      "--summary",
      str(tmp_path / "scale.json"),
      "--update",
      str(results),
      "--data_dir",
      str(tmp_path / "no_data"),  # No gold labels: the shares are listed without them.
    ]
  )
  captured = capsys.readouterr()
  printed = captured.out
  updated = results.read_text()
  assert updated.startswith("kept\n") and "old" not in updated
  assert "| emo | 100,000 | 1 | 12 | 26.00 |" in updated and "](scale.png)" in updated
  assert "| mle | 25,000 | 1 | 12 | 30.00 | 0.400 | 0.400 | 0.700 |" in printed
  assert "| emo | 100,000 | 1 | 12 | 26.00 | 0.400 | 0.500 | 0.700 |" in printed
  assert "| emo (study) | 122,880 | 2 | 60 | 20.50 |" in printed  # Mean of the two seeds.
  assert "| base | 0 | 1 | 0 | 37.00 |" in printed
  # EMO against MLE, seed 0, budget by budget (240k unfinished: no row), then the study's.
  assert "| 25,000 | +1.00 | +0.000 | +0.100 (+1 / -0, p=1.000) | +0.000 (+0 / -0, p=1.000) |" in (
    printed
  )
  assert "| 100,000 | +1.00 |" in printed and "240,000" not in printed
  assert "| 122,880 (study) | +1.00 | +0.000 | +0.000 (+0 / -0, p=1.000) |" in printed
  assert "| emo | 25,000 | 0.00 / 0.00 / 1.00 / 0.00 | 0.20 / 0.80 |" in printed
  assert "| gold |" not in printed and "gold labels left out" in captured.err
  assert "Wall-clock of each stage" in printed  # No timings.jsonl here: the header alone.
  assert "| base | 0 | 0.500 | 0.600 | 0.700 | 0.700 | 20 / 20 |" in printed
  assert "| emo_25k | 25,000 | 0.500 | 0.700 | 0.700 | 0.700 | 19 / 20 |" in printed
  assert "| 25,000 | +0.300 (+3 / -0, p=0.250) | +0.000 (+0 / -0, p=1.000) |" in printed
  assert (tmp_path / "scale.png").stat().st_size > 10_000
  summary = json.load(open(tmp_path / "scale.json"))
  assert summary["emo"]["25000"]["0"]["ag_news"] == pytest.approx(0.5)
  assert summary["emo"]["25000"]["0"]["ag_news 95% CI"] == pytest.approx([0.3, 0.9])
  assert "240000" not in summary["mle"]  # Unfinished points are absent, not zero.
  assert data_scale.PER_QUERY not in summary["emo"]["25000"]["0"]  # They stay in the archive.


def test_data_scale_calibrates_every_point_whose_export_was_kept(tmp_path):
  import data_scale

  kept = study_grid.run_dir(str(tmp_path), data_scale.group(100_000), "emo", 0)
  os.makedirs(os.path.join(kept, "hf_export"))
  command, missing = data_scale.calibrate_command(
    str(tmp_path), "out.json", data_scale.BUDGETS, data_scale.OBJECTIVES, 0
  )
  models = [command[i + 1] for i, flag in enumerate(command) if flag == "--model"]
  assert models == [
    f"base={data_scale.PRETRAINED}",
    f"emo_100k={os.path.join(kept, 'hf_export')}",
  ]
  assert missing == ["mle_25k", "emo_25k", "mle_100k", "mle_240k", "emo_240k"]


@pytest.mark.parametrize(
  "gold_sst2, error",
  [
    ([1, 1, 0, 0], None),
    ([1, 1, 0, 1], "sst2 outcomes do not match"),  # An outcome the gold label contradicts.
    ([1, 1, 0], "3 queries"),  # Fewer queries than the point was scored on.
  ],
)
def test_data_scale_label_shares_check_the_gold_labels(gold_sst2, error):
  import data_scale

  def per_query(predictions, gold):
    return {"predictions": predictions, "correct": [p == g for p, g in zip(predictions, gold)]}

  gold = {"ag_news": [0, 1, 2, 3], "sst2": [1, 1, 0, 0]}
  record = {
    data_scale.PER_QUERY: {
      "ag_news": per_query([2, 2, 2, 3], gold["ag_news"]),
      "sst2": per_query([1, 1, 1, 1], gold["sst2"]),
    }
  }
  table = {"emo": {25_000: {0: record}}}
  if error:
    with pytest.raises(ValueError, match=error):
      data_scale.label_shares_report(table, gold={**gold, "sst2": gold_sst2})
    return
  report = data_scale.label_shares_report(table, gold=gold)
  assert "| gold | — | 0.25 / 0.25 / 0.25 / 0.25 | 0.50 / 0.50 |" in report
  assert "| emo | 25,000 | 0.00 / 0.00 / 0.75 / 0.25 | 0.00 / 1.00 |" in report


@pytest.mark.parametrize("optimum", [0.93, 1.0, 1.17, 1.62])
def test_optimal_temperature_is_the_vertex_in_inverse_temperature(optimum):
  import calibration

  grid = calibration.TEMPERATURES
  # A parabola in beta = 1/T is fitted exactly; past the grid's end, the end is the answer.
  nll = [3.0 * (1 / t - 1 / optimum) ** 2 + 7.0 for t in grid]
  expected = optimum if grid[0] <= optimum <= grid[-1] else grid[-1]
  assert calibration.optimal_temperature(grid, nll) == pytest.approx(expected, abs=1e-9)


@pytest.mark.slow
def test_calibration_measures_every_point_once_and_reports_paired_verdicts(
  tmp_path, data_dir, capsys, monkeypatch
):
  del data_dir  # read_split finds the corpora through EMO_JAX_DATA, which it checks.
  import calibration

  workdirs, out, corpus = tmp_path / "workdirs", str(tmp_path / "calibration.json"), "ag_news"
  base = _save_tiny_llama(tmp_path / "base", 0)
  for index, (objective, seed) in enumerate([("mle", 0), ("mle", 1), ("emo", 0), ("emo", 1)]):
    _save_tiny_llama(
      os.path.join(study_grid.run_dir(str(workdirs), corpus, objective, seed), "hf_export"),
      index + 1,
    )
  grid = [
    "--out",
    out,
    "--corpora",
    corpus,
    "--objectives",
    "mle",
    "emo",
    "tailr",
    "--seeds",
    "0",
    "1",
  ]
  # The study's archive has MLE seed 0's test perplexity (made up here): the run records it.
  archive = str(tmp_path / "archive")
  _write_json(
    os.path.join(study_grid.run_dir(archive, corpus, "mle", 0), "eval.json"), {"perplexity": 2.0}
  )
  calibration.main(
    ["run", "--workdirs", str(workdirs), "--base", base, "--smoke", "--archive", archive, *grid]
  )
  printed = capsys.readouterr().out
  assert f"no export {study_grid.run_dir(str(workdirs), corpus, 'tailr', 0)}/hf_export" in printed
  assert "measured already" not in printed
  # Five models of one architecture: one compilation for the validation grid, one for the
  # test's two temperatures.
  assert calibration.jitted_calibration_step()._cache_size() == 2
  results = json.load(open(out))
  assert sorted(results) == [
    f"{corpus}/{name}"
    for name in ["base/seed0", "emo/seed0", "emo/seed1", "mle/seed0", "mle/seed1"]
  ]
  temperatures = calibration.TEMPERATURES
  for record in results.values():
    fit = np.asarray(record["fit"]["ce_sum"])
    assert len(fit) == len(temperatures) and record["fit"]["count"] == 8 * 16  # Smoke sizes.
    assert record["blocks"] == {"fit": 8, "test": 8}
    # T* lies within a grid step of the grid's best temperature (refined between them).
    best = temperatures[int(np.argmin(fit))]
    assert abs(1 / record["T*"] - 1 / best) <= 1 / 0.8 - 1 / 0.85 + 1e-9
    # A random model's predictions are near-uniform over 50257 tokens: entropy ~ log V.
    assert 0.9 * np.log(50257) < record["entropy"] <= np.log(50257)
  assert [key for key, record in results.items() if record["study perplexity"]] == [
    f"{corpus}/mle/seed0"
  ]
  assert results[f"{corpus}/mle/seed0"]["study perplexity"] == 2.0
  # Measured points are not measured again.
  monkeypatch.setattr(calibration, "measure", lambda *args: pytest.fail("measured twice"))
  calibration.main(["run", "--workdirs", str(workdirs), "--base", base, "--smoke", *grid])
  assert "measured already: ag_news/emo/seed1" in capsys.readouterr().out
  # The report pairs EMO's seeds with MLE's; the base has a row without a verdict.
  calibration.main(["report", *grid])
  text = capsys.readouterr().out
  rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
  assert rows["base"].count("(") == 0 and rows["mle"].count("(") == 0
  assert rows["emo"].count("better on") == 2 and "| 2 |" in rows["emo"]  # The two perplexities.
  assert "tailr" not in rows
  off = results[f"{corpus}/mle/seed0"]["perplexity"] / 2.0 - 1
  assert f"from the study's (`eval.json`) by at most {100 * abs(off):.2g} % over 1 points." in text


def test_cost_geometry_terms_match_direct_computations():
  """The diagnosis behind the AG News / Tiny Shakespeare collapse: its closed-form uniform
  DEMD must be DEMD of equal logits, and its CE/DEMD the losses module's on the model."""
  import jax
  import jax.numpy as jnp

  from emo_jax import losses
  from emo_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel

  import cost_geometry

  model = GPT2LMHeadModel(GPT2Config.preset("tiny", vocab_size=37, n_positions=16))
  blocks = jax.random.randint(jax.random.key(1), (3, 9), 0, 37)
  params = model.init(jax.random.key(0), blocks[:, :-1])["params"]
  ce, demd, uniform = cost_geometry.cost_terms(model, params, blocks)

  head = model.apply({"params": params}, method=model.output_embeddings)  # [V, d]
  targets = blocks[:, 1:]
  equal_logits = jnp.zeros(targets.shape + (37,))
  np.testing.assert_allclose(uniform, jnp.mean(losses.demd(equal_logits, targets, head)), rtol=1e-5)
  # And by hand in NumPy: the mean over positions of sum_i (1 - cos(e_i, e_t)) / V.
  unit = np.asarray(head) / np.linalg.norm(np.asarray(head), axis=-1, keepdims=True)
  by_hand = np.mean(1.0 - (unit[np.asarray(targets)] @ unit.T).mean(-1))
  np.testing.assert_allclose(uniform, by_hand, rtol=1e-5)
  logits = model.apply({"params": params}, blocks[:, :-1])
  np.testing.assert_allclose(ce, jnp.mean(losses.cross_entropy(logits, targets)), rtol=1e-6)
  np.testing.assert_allclose(demd, jnp.mean(losses.demd(logits, targets, head)), rtol=1e-6)
  assert ce > 3.0 and 0.0 < uniform < 2.0  # A random tiny model predicts near uniform.


def test_study_gpu_config_flags_follow_main_py():
  import study_gpu

  config = study_gpu.make_config(
    "study_gpu_finetune",
    [
      "--config.loss.name=tailr",
      "--config.seed=2",
      "--config.optim.learning_rate=3e-5",
      "--config.eval.text_metrics=True",
    ],
  )
  assert (config.loss.name, config.seed, config.optim.learning_rate) == ("tailr", 2, 3e-5)
  assert config.eval.text_metrics is True
  # The GPU grid keeps the CPU grid's protocol; only where the time goes differs.
  from configs import study_finetune

  gpu, cpu = study_gpu.make_config("study_gpu_finetune", []), study_finetune.get_config()
  for section in ("loss", "optim", "data"):
    assert gpu[section].to_dict() == cpu[section].to_dict(), section
  for field in ("num_steps", "batch_size", "eval_every"):
    assert gpu.train[field] == cpu.train[field], field
  for field in ("split", "num_prompts", "max_new_tokens", "temperature", "mauve_runs"):
    assert gpu.eval[field] == cpu.eval[field], field
  # Values are parsed by the field's type, as main.py parses them: a digit string for a
  # string field stays a string; a word for an integer field is an error.
  assert (
    study_gpu.make_config("study_gpu_finetune", ["--config.eval.featurizer=1"]).eval.featurizer
    == "1"
  )
  with pytest.raises(Exception, match="config.seed=abc"):
    study_gpu.make_config("study_gpu_finetune", ["--config.seed=abc"])
  with pytest.raises(ValueError, match="unknown config field 'train.nonsense'"):
    study_gpu.make_config("study_gpu_finetune", ["--config.train.nonsense=1"])
  with pytest.raises(ValueError, match="expected --config"):
    study_gpu.make_config("study_gpu_finetune", ["--train.num_steps=1"])


@pytest.mark.slow
def test_study_gpu_runs_packs_unpacks_and_scores(tmp_path):
  # The accelerator path at --smoke size on CPU: base + one point in one process, the pack
  # that comes back from the device, unpacked and scored here.
  script = os.path.join(REPO, "experiments", "study_gpu.py")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  device_root, archive = tmp_path / "device", tmp_path / "study_gpu.tar.gz"
  run = lambda *args: subprocess.run(
    [sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=900
  )
  result = run(
    "run",
    "--smoke",
    "--root",
    str(device_root),
    "--objectives",
    "mle",
    "--seeds",
    "0",
    "--pack",
    str(archive),
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert "study_gpu: mle seed 0 done" in result.stdout
  workdir = device_root / "wikitext2_raw_carved" / "mle" / "seed0"
  assert not (workdir / "best").exists()  # Weights dropped once evaluated.
  # The budget: nothing left to do for seed 0; emo would not fit in zero minutes.
  result = run(
    "run",
    "--smoke",
    "--root",
    str(device_root),
    "--objectives",
    "mle",
    "emo",
    "--seeds",
    "0",
    "--budget-minutes",
    "0",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "stopping before emo seed 0" in result.stdout
  assert not (device_root / "wikitext2_raw_carved" / "emo").exists()

  import tarfile

  with tarfile.open(archive) as packed:
    names = packed.getnames()
  assert "./wikitext2_raw_carved/mle/seed0/generations.jsonl" in names
  assert not [n for n in names if n.split("/")[-1] in ("best", "checkpoints", "hf_export")]

  root = tmp_path / "here"
  assert run("unpack", str(archive), "--root", str(root)).returncode == 0
  records = [json.loads(line) for line in open(root / "timings.jsonl")]
  assert {r["marker"] for r in records} == {
    str(root / "base" / "results.json"),
    str(root / "wikitext2_raw_carved" / "mle" / "seed0" / "results.json"),
    str(root / "wikitext2_raw_carved" / "mle" / "seed0" / "eval.json"),
  }
  unscored = json.load(open(root / "wikitext2_raw_carved" / "mle" / "seed0" / "eval.json"))
  assert "mauve" not in unscored and unscored["num_prompts"] == 8
  result = run("score", "--root", str(root), "--objectives", "mle", "--seeds", "0")
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  scored = json.load(open(root / "wikitext2_raw_carved" / "mle" / "seed0" / "eval.json"))
  assert scored["perplexity"] == unscored["perplexity"]
  assert 0.0 <= scored["mauve"]["mean"] <= 1.0 and len(scored["mauve"]["runs"]) == 5
  assert study_report.collect(str(root), ["wikitext2_raw_carved"], ["mle"], [0])[
    "wikitext2_raw_carved"
  ]["mle"]["seeds"] == [0]
  # The report names the device the timings were taken on (here JAX's CPU "device").
  report = study_report.timings_report(str(root), {"wikitext2_raw_carved": {"mle": {}}})
  assert report.startswith("Device: cpu (`cores`")
  assert "| eval | wikitext2_raw_carved | mle |" in report


import fewshot as fewshot_driver


@pytest.mark.slow
def test_fewshot_driver_scores_tables_and_resumes(tmp_path, monkeypatch, capsys):
  import jax
  import jax.numpy as jnp

  from emo_jax import models

  model = models.from_config("gpt2", "tiny", vocab_size=50257, max_length=512)
  models.save_pretrained(
    model,
    model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"],
    str(tmp_path / "tiny"),
  )
  out = str(tmp_path / "fewshot.json")
  argv = [
    "--model",
    f"a={tmp_path / 'tiny'}",
    "--model",
    f"b={tmp_path / 'tiny'}",
    "--k",
    "2",
    "--max_queries",
    "6",
    "--batch_size",
    "4",
    "--out",
    out,
  ]
  results = fewshot_driver.main(argv)
  assert set(results) == {"a", "b"} and set(results["a"]["tasks"]) == {"ag_news", "sst2"}
  assert all(results[m]["tasks"][t]["n"] == 6 for m in "ab" for t in ("ag_news", "sst2"))
  # The same model twice: identical predictions, so no discordant pair.
  assert (
    results["a"]["tasks"]["sst2"]["predictions"] == results["b"]["tasks"]["sst2"]["predictions"]
  )
  printed = capsys.readouterr().out
  assert "+0 / -0 (1.000)" in printed and "Contextually calibrated" in printed
  assert results["a"]["tasks"]["sst2"]["calibrated"]["n"] == 6
  assert json.load(open(out)) == json.loads(json.dumps(results))

  def must_not_load(*args, **kwargs):
    raise AssertionError("a scored model was scored again")

  with monkeypatch.context() as patch:
    patch.setattr(fewshot_driver.models, "from_pretrained", must_not_load)
    assert fewshot_driver.main(argv) == json.loads(json.dumps(results))
  # Other settings: the stored scores do not count, so both models are scored again.
  rescored = fewshot_driver.main(
    [*argv[:4], "--k", "2", "--max_queries", "4", "--batch_size", "4", "--out", out]
  )
  assert rescored["a"]["settings"]["max_queries"] == 4
  assert all(rescored[m]["tasks"][t]["n"] == 4 for m in "ab" for t in ("ag_news", "sst2"))
  # Scores stored under other content-free inputs (or before calibration) are scored again.
  stored = json.load(open(out))
  stored["a"]["settings"]["content_free"] = ["N/A"]
  with open(out, "w") as f:
    json.dump(stored, f)
  loaded = []
  real_from_pretrained = fewshot_driver.models.from_pretrained
  with monkeypatch.context() as patch:
    patch.setattr(
      fewshot_driver.models,
      "from_pretrained",
      lambda source: loaded.append(source) or real_from_pretrained(source),
    )
    rescored = fewshot_driver.main([*argv[:4], "--k", "2", "--max_queries", "4", "--out", out])
  assert len(loaded) == 1 and "calibrated" in rescored["a"]["tasks"]["sst2"]


def _step_batch(batch, length, vocab, seed=0):
  tokens = np.random.default_rng(seed).integers(0, vocab, (1, batch, length + 1)).astype(np.int32)
  weights = np.ones((1, batch, length), np.float32)
  return {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "weights": weights}


@pytest.mark.parametrize("with_lora", [False, True])
def test_benchmark_step_never_compiles_inside_the_timing(with_lora):
  """Loaded weights arrive as host arrays; the benchmarks' step still runs them and its own
  outputs with the one executable compiled in set-up (timing a silent second compilation
  once made emo_jax's SmolLM2 step look slower than torch's), and a call it was not
  compiled for is an error, never a recompilation. With LoRA the loaded weights stay frozen
  under fresh adapters."""
  import flax.linen as nn
  import jax

  from emo_jax import models
  from emo_jax.models import lora

  import benchmarking

  model = models.from_config("llama", "tiny", vocab_size=96, max_length=16)
  params = nn.meta.unbox(model.init(jax.random.key(1), np.zeros((1, 8), np.int32))["params"])
  params = jax.tree.map(np.asarray, params)
  if with_lora:
    config = lora.LoraConfig(rank=2, alpha=4, dropout=0.1, targets=("q_proj", "down_proj"))
    model = lora.adapt(model, config)
  batch = _step_batch(2, 16, 96)
  state, step = benchmarking.train_step_setup(
    model, "emo", 16, batch, params=params, use_dropout=with_lora
  )
  losses = []
  for _ in range(3):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[2] < losses[0]
  if with_lora:
    base = lora.split(state.params)[1]
    assert len(lora.check_targets(state.params, config)) == 2 * model.config.num_hidden_layers
    jax.tree.map(np.testing.assert_array_equal, base, params)
  with pytest.raises(TypeError, match="compiled"):
    step(state, _step_batch(3, 16, 96))


@pytest.mark.slow
def test_device_benchmark_script_runs_every_table_at_smoke_size(tmp_path):
  """experiments/bench_device.py is run on a lent accelerator; its --smoke run keeps every
  code path working here (four train-step rows, five loss rows, a profile)."""
  result = subprocess.run(
    [sys.executable, os.path.join(REPO, "experiments", "bench_device.py"), "--smoke"]
    + ["--out", str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  numbers = json.load(open(tmp_path / "bench_device.json"))
  assert [(r["model"], r["loss"]) for r in numbers["train_steps"]] == [
    (m, loss) for m in ("GPT-2 small", "SmolLM2-135M shape") for loss in ("mle", "emo")
  ]
  assert [r["method"] for r in numbers["loss"]] == [
    "naive CE",
    "naive EMO",
    "fused CE",
    "fused EMO",
    "tokamax CE (xla)",
  ]
  assert numbers["profile"] and all(r["microseconds"] > 0 for r in numbers["profile"])
  assert "| GPT-2 small | emo |" in (tmp_path / "bench_device.md").read_text()


def test_instruct_report_rows_from_workdirs(tmp_path):
  import instruct_report

  def evaluation(ppl):
    return {
      "perplexity": ppl,
      "mean_demd": 0.5,
      "mauve": {"mean": 0.4, "std": 0.01},
      "rouge": {"rougeL": 0.2},
      "greedy_rouge": {"rougeL": 0.3},
      "response_words": {"sampled": 40.0, "greedy": 30.0, "reference": 45.0},
      "sampled_finished": 0.9,
      "greedy_finished": 0.8,
    }

  (tmp_path / "base").mkdir()
  (tmp_path / "base" / "eval.json").write_text(json.dumps(evaluation(9.0)))
  for name, ppl in (("lora.rank=16,loss.name=emo", 7.5), ("lora.rank=0,loss.name=mle", 7.0)):
    run = tmp_path / name
    run.mkdir()
    (run / "eval.json").write_text(json.dumps(evaluation(ppl)))
    (run / "results.json").write_text(json.dumps({"trainable_parameters": 123}))
    (run / "best_metric.json").write_text(json.dumps({"step": 20, "eval/perplexity": ppl - 1}))
    (run / "metrics.jsonl").write_text(
      "\n".join(json.dumps({"step": s, "train/step_seconds": s}) for s in (1, 2, 30)) + "\n"
    )
  (tmp_path / "lora.rank=16,loss.name=mle").mkdir()  # Not evaluated yet: no row.
  text = instruct_report.table(instruct_report.rows(str(tmp_path)))
  lines = text.splitlines()
  assert [line.split(" | ")[0] for line in lines[2:]] == [
    "| base (untouched)",
    "| full · MLE",
    "| LoRA r16 · EMO",
  ]
  assert "| 6.000 (20) | 7.000 |" in lines[3] and lines[3].endswith("| 2.0 | 123 |")
  # Prompt by prompt: the first run copies the reference on two prompts of three.
  references = ["the cat sat on the mat", "a b c d", "one two three"]
  for name, outputs in (
    ("lora.rank=16,loss.name=emo", ["the cat sat on the mat", "a b c d", "zzz"]),
    ("lora.rank=0,loss.name=mle", ["the dog", "a x", "zzz"]),
  ):
    lines_out = [
      json.dumps({"model": o, "greedy": o, "human": r}) for o, r in zip(outputs, references)
    ]
    (tmp_path / name / "generations.jsonl").write_text("\n".join(lines_out) + "\n")
  text = instruct_report.paired(
    str(tmp_path), "lora.rank=16,loss.name=emo", "lora.rank=0,loss.name=mle"
  )
  assert "sampled: mean difference +0.4" in text and "(better on 2, worse on 0)" in text
