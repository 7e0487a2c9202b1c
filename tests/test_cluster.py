"""Studies through submitit: `ablate --executor local` runs a micro study in real submitit jobs and gives the same
report as the default path; the Slurm options are checked before anything is written; the job parameters reach the
sbatch script submitit writes (no cluster here: the Slurm tests stop at the script, or use a stand-in `sbatch` that
accepts a submission and runs nothing)."""
from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pandas as pd
import papermill
import pytest
import submitit
from runfactory import make_run

from t2s import cli
from t2s.config import PROJECT_ROOT, ConfigError
from t2s.study import ablate, executors
from t2s.study.executors import RunJob, SlurmOptions, make_executor, parse_mem_gb, parse_time_minutes
from t2s.study.runs import plan_study

VARIANTS = ["baseline", "no_ema"]
# measured, not computed: these may differ between two runs of the same config
TIMING = {"train_time_hours", "clips_per_s", "peak_memory_gb", "mean_memory_gb", "inference_time_ms",
          "inference_memory_gb"}


# ----------------------------------------------------------------------------------------------- the whole path
@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The same micro study twice: the default path (run_study in this process) and `ablate --executor local`
    (the command line), from another working directory, so the jobs find t2s only through the PYTHONPATH they get."""
    root = tmp_path_factory.mktemp("cluster")
    data_dir = root / "synthsign"
    executed, reports = root / "executed", root / "reports"
    default = ablate.run_study("micro-default", variants=VARIANTS, seeds=[0], scale="micro",
                               overrides={"data_dir": str(data_dir)}, executed_dir=executed, reports_dir=reports,
                               log=lambda line: None)
    assert default.ok, [(r.name, r.status, r.error) for r in default.runs]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        code = cli.main(["ablate", "--executor", "local", "--study", "micro-local", "--scale", "micro",
                         "--variants", *VARIANTS, "--seeds", "0", "--data-dir", str(data_dir),
                         "--executed-dir", str(executed), "--reports-dir", str(reports)])
    return root, code


def table(root: Path, study: str) -> pd.DataFrame:
    return pd.read_csv(root / "reports" / study / "comparison_table.csv")


def test_ablate_executor_local_runs_each_run_as_a_submitit_job(studies):
    root, code = studies
    assert code == 0
    folder = root / "executed" / "micro-local"
    jobs = json.loads((folder / "study.json").read_text())["jobs"]
    assert sorted(jobs) == ["baseline-seed0", "no_ema-seed0"]
    for name, job in jobs.items():
        assert (job["executor"], job["status"]) == ("local", "finished")
        assert json.loads((folder / name / "metadata.json").read_text())["status"] == "finished"
        assert (folder / f"{name}.ipynb").is_file()  # the executed notebook, as the default path writes it
        log = Path(job["stdout"])
        assert log.parent == folder / ".submitit" and log.name == f"{job['job_id']}_0_log.out"
        assert f"{name}: finished in" in log.read_text()  # run_planned ran inside the job and said so
    assert len({job["job_id"] for job in jobs.values()}) == 2
    # one job at a time: the second is submitted once the first has ended (two trainings would share the cores)
    assert jobs["no_ema-seed0"]["submitted"] >= jobs["baseline-seed0"]["ended"]
    assert not (folder / "failures.json").exists() or json.loads((folder / "failures.json").read_text()) == {}


def test_executor_local_gives_the_same_report_as_the_default_path(studies):
    root, _ = studies
    default, local = table(root, "micro-default"), table(root, "micro-local")
    assert list(local.columns) == list(default.columns)
    assert local[["variant", "metric"]].values.tolist() == default[["variant", "metric"]].values.tolist()
    assert set(local["variant"]) == set(VARIANTS)
    same = ~local["metric"].isin(TIMING)
    assert same.sum() >= 10
    # losses, held-out losses and the evaluation metrics do not depend on where the run ran
    np.testing.assert_array_equal(local.loc[same, "mean"].to_numpy(), default.loc[same, "mean"].to_numpy())
    assert (local.loc[~same, "mean"].notna() == default.loc[~same, "mean"].notna()).all()
    for name in ("baseline-seed0", "no_ema-seed0"):
        logs = [pd.read_csv(root / "executed" / s / name / "logs" / "training_metrics.csv")
                for s in ("micro-default", "micro-local")]
        np.testing.assert_array_equal(logs[0]["loss"].to_numpy(), logs[1]["loss"].to_numpy())
    for study in ("micro-default", "micro-local"):
        html = (root / "reports" / f"{study}.html").read_text(encoding="utf-8")
        assert "Comparison" in html and "data:image/gif;base64," in html
        assert str(root) not in html and ".submitit" not in html  # no job folders or machine paths in the report
    assert (root / "executed" / "micro-local" / "analysis.ipynb").is_file()


def test_a_second_local_ablate_skips_finished_runs_without_submitting(studies, tmp_path):
    root, _ = studies
    lines = []
    again = ablate.run_study("micro-local", variants=VARIANTS, seeds=[0], scale="micro",
                             overrides={"data_dir": str(root / "synthsign")}, executed_dir=root / "executed",
                             reports_dir=tmp_path, build_report=False, executor="local", log=lines.append)
    assert [r.status for r in again.runs] == ["skipped", "skipped"]
    assert not any("submitted" in line for line in lines)


def test_a_job_that_dies_without_a_result_is_a_recorded_failure(tmp_path):
    """A job killed from outside (out of memory, a node failure) leaves no result: the run is failed, with the
    job's id and log in failures.json."""
    study_dir = tmp_path / "executed" / "s"
    (plan,) = plan_study("s", ["baseline"], [0], "micro", {}, tmp_path / "executed")
    study_dir.mkdir(parents=True)
    job = make_executor("local", study_dir / ".submitit", "s").submit(os._exit, 3)
    job.wait()
    job._results_timeout_s = 0  # submitit waits 15 s for a result file a slow shared filesystem may not show yet
    outcome = executors._collect(job, plan)
    assert (outcome.status, outcome.job_id) == ("failed", str(job.job_id))
    entry = json.loads((study_dir / "failures.json").read_text())["baseline-seed0"]
    assert entry["ename"] == "UncompletedJobError" and entry["evalue"].startswith(f"job {job.job_id}: ")


# ----------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("argv, named", [
    (["--partition", "gpu"], "--partition"),
    (["--executor", "local", "--time", "2", "--mem", "8G"], "--time, --mem"),
    (["--gpus-per-job", "2"], "--gpus-per-job"),
    (["--sbatch", "account=lab"], "--sbatch"),
    (["--cpus-per-job", "4", "--executor", "local"], "--cpus-per-job"),
    (["--submitit-folder", "logs"], "--submitit-folder"),
    (["--executor", "slurm", "--gpus", "0,1"], "--gpus"),
    (["--executor", "slurm", "--time", "soon"], "--time"),
    (["--executor", "slurm", "--mem", "lots"], "--mem"),
    (["--executor", "slurm", "--sbatch", "account"], "--sbatch"),
])
def test_a_misplaced_or_malformed_slurm_option_is_an_error_naming_it(tmp_path, capsys, argv, named):
    code = cli.main(["ablate", "--executed-dir", str(tmp_path / "executed"), *argv])
    assert code == 2
    assert f"error: {named}" in capsys.readouterr().err
    assert not (tmp_path / "executed").exists()


def test_slurm_options_from_the_command_line():
    args = cli.build_parser().parse_args(["ablate", "--executor", "slurm", "--partition", "gpu", "--gpus-per-job", "2",
                                          "--time", "1:30", "--cpus-per-job", "8", "--mem", "32G",
                                          "--sbatch", "account=lab", "--sbatch", "qos=high"])
    assert cli.slurm_options(args) == SlurmOptions(partition="gpu", gpus_per_job=2, timeout_min=90, cpus_per_job=8,
                                                   mem_gb=32.0, sbatch={"account": "lab", "qos": "high"})
    defaults = cli.slurm_options(cli.build_parser().parse_args(["ablate", "--executor", "slurm"]))
    assert defaults == SlurmOptions() and (defaults.gpus_per_job, defaults.timeout_min) == (1, 240)
    assert cli.slurm_options(cli.build_parser().parse_args(["ablate", "--executor", "local"])) is None


@pytest.mark.parametrize("text, minutes", [("4", 240), ("0.5", 30), ("2:30", 150), ("1:00:30", 61),
                                           ("1-00:00:00", 1440), ("0.01", 1)])
def test_time_limits_read_as_hours_or_slurm_time(text, minutes):
    assert parse_time_minutes(text) == minutes


@pytest.mark.parametrize("text, gb", [("32", 32.0), ("32G", 32.0), ("16gb", 16.0), ("512M", 0.5), ("1T", 1024.0)])
def test_memory_reads_with_units(text, gb):
    assert parse_mem_gb(text) == gb


@pytest.mark.parametrize("bad", [{"gpus_per_job": -1}, {"timeout_min": 0}, {"cpus_per_job": 0}, {"mem_gb": 0},
                                 {"partition": "gpu; rm -rf /"}])
def test_bad_slurm_options_are_refused(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        SlurmOptions(**bad)


def test_run_study_refuses_slurm_options_for_another_executor(tmp_path):
    with pytest.raises(ConfigError, match="Slurm options are for executor 'slurm'"):
        ablate.run_study("s", executor="local", slurm=SlurmOptions(), executed_dir=tmp_path)
    with pytest.raises(ConfigError, match="executor 'cloud'"):
        ablate.run_study("s", executor="cloud", executed_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- Slurm, without a cluster
def test_executor_slurm_without_sbatch_fails_before_anything_is_written(tmp_path, monkeypatch):
    run = make_run(tmp_path / "executed" / "s", "baseline", 0)
    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: calls.append(a))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no sbatch, no srun
    with pytest.raises(ConfigError, match="sbatch and srun not found on PATH.*Nothing was submitted"):
        ablate.run_study("s", variants=["baseline"], force=True, executor="slurm", executed_dir=tmp_path / "executed",
                         reports_dir=tmp_path / "reports", log=lambda line: None)
    assert calls == []
    assert (run / "summary.json").is_file()  # force did not move the finished run aside
    assert sorted(p.name for p in run.parent.iterdir()) == ["baseline-seed0", "baseline-seed0.ipynb"]


def stand_in_slurm(folder: Path, job_id: int = 4242, refuse: str = "") -> Path:
    """A bin folder with `srun`, `sacct` and an `sbatch` that accepts a script (copied to <folder>/submitted.sh)
    and prints a job id without running anything (or refuses it with the message `refuse`): what submitit needs to
    submit, not a cluster."""
    folder.mkdir(parents=True, exist_ok=True)
    accept = f'cp "$1" "{folder}/submitted.sh"\necho "Submitted batch job {job_id}"'
    scripts = {
        "sbatch": "#!/bin/sh\n" + (f'echo "{refuse}" >&2\nexit 1' if refuse else accept) + "\n",
        "srun": "#!/bin/sh\nexit 1\n",
        "sacct": "#!/bin/sh\nexit 0\n",  # knows no job: submitit keeps it as not finished
    }
    for name, text in scripts.items():
        path = folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


def test_slurm_job_parameters_reach_the_sbatch_script(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{stand_in_slurm(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    options = SlurmOptions(partition="gpu", gpus_per_job=2, timeout_min=90, cpus_per_job=8, mem_gb=32,
                           sbatch={"account": "lab", "qos": "high"})
    executor = make_executor("slurm", tmp_path / "jobs", "s", options)
    assert executor.cluster == "slurm" and isinstance(executor._executor, submitit.SlurmExecutor)
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit jobs", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --time=90", "#SBATCH --nodes=1",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB",
                 "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --job-name=t2s-s",
                 f"#SBATCH --output={tmp_path / 'jobs'}/%j_0_log.out",
                 f"export PYTHONPATH={PROJECT_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"):
        assert line in script.splitlines(), line
    default = make_executor("slurm", tmp_path / "jobs", "s", SlurmOptions())
    script = default._executor._make_submission_file_text("python -u -m submitit.core._submit jobs", "uid")
    assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --time=240" in script
    assert "--partition" not in script and "--mem" not in script and "--cpus-per-task" not in script


def test_interrupting_a_slurm_study_leaves_the_jobs_and_says_how_to_report(tmp_path, monkeypatch):
    """Ctrl-C while waiting: the jobs stay queued (their ids are in study.json) and the message names squeue and
    the report command. The stand-in sbatch accepts the job and runs nothing."""
    bin_dir = stand_in_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: calls.append(a))

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupt)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        ablate.run_study("s", variants=["baseline"], scale="micro", executor="slurm",
                         slurm=SlurmOptions(partition="gpu", gpus_per_job=2, timeout_min=30),
                         executed_dir=tmp_path / "executed",
                         reports_dir=tmp_path / "reports", log=lines.append)
    assert calls == []  # nothing ran here
    text = "\n".join(lines)
    assert "[1/1] baseline-seed0: submitted as slurm job 4242" in text
    assert "keep running on the cluster" in text and "squeue -j 4242" in text and "scancel 4242" in text
    assert (f"python -m t2s report --study s --executed-dir {tmp_path / 'executed'} "
            f"--reports-dir {tmp_path / 'reports'}") in text
    job = json.loads((tmp_path / "executed" / "s" / "study.json").read_text())["jobs"]["baseline-seed0"]
    assert (job["executor"], job["job_id"]) == ("slurm", "4242") and "status" not in job
    script = (bin_dir / "submitted.sh").read_text()
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --job-name=t2s-s-baseline-seed0" in script
    assert "#SBATCH --gpus-per-node=2" in script
    # what the job will run: run_planned for this plan, whose notebook trains data parallel on the job's two GPUs
    jobs = tmp_path / "executed" / "s" / ".submitit"
    submitted = submitit.helpers.DelayedSubmission.load(jobs / "4242_submitted.pkl")
    plan, index, total, forced, environment = submitted.args
    assert isinstance(submitted.function, RunJob)
    assert (plan.name, index, total, forced) == ("baseline-seed0", 1, 1, False)
    assert plan.parameters["num_processes"] == 2 and environment is None


def test_a_job_is_requeueable_with_its_own_arguments():
    """submitit calls checkpoint() on a Slurm timeout or preemption and requeues what it returns: the same run,
    which train() then resumes from its latest checkpoint."""
    (plan,) = plan_study("s", ["baseline"], [0], "micro", {}, Path("executed"))
    again = RunJob().checkpoint(plan, 1, 1, False, None)
    assert isinstance(again, submitit.helpers.DelayedSubmission) and isinstance(again.function, RunJob)
    assert again.args == (plan, 1, 1, False, None)


def test_a_job_sbatch_refuses_stops_the_study_with_sbatchs_reason(tmp_path, monkeypatch, capsys):
    bin_dir = stand_in_slurm(tmp_path / "bin", refuse="sbatch: error: invalid partition specified: nope")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code = cli.main(["ablate", "--executor", "slurm", "--partition", "nope", "--study", "s", "--scale", "micro",
                     "--executed-dir", str(tmp_path / "executed"), "--reports-dir", str(tmp_path / "reports")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: baseline-seed0: submitting the slurm job failed: sbatch: error: invalid partition specified" in err
    assert "jobs" not in json.loads((tmp_path / "executed" / "s" / "study.json").read_text())
