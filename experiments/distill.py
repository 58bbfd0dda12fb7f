"""The distillation study: synthetic expressions -> BasicSR traces -> training data -> tiny model -> evaluation.

    python experiments/distill.py --config experiments/distill-h100.json            # GPU machine, < 9 min
    python experiments/distill.py --config experiments/distill-cpu.json             # laptop, ~75 s
    python experiments/distill.py --config ... --stages train,evaluate,report       # some stages only

One command runs the whole study as stages, each a call of the project's
own scripts (so every number can be reproduced by hand from the commands
written to the study log):

    expressions  generate_expressions.py (benchmark-equivalent formulas rejected)
    traces       generate_traces.py, BasicSR on every expression, all cores
    check        every traced expression re-checked against the 21 benchmark
                 problems (problems.matches_benchmark): the training data
                 must contain none of them
    convert      one_step_conversion.py, one run per conversion variant
    train        train.py, one run per trained model (all models at once: a
                 tiny model leaves most of a GPU idle)
    dagger       dagger.py, one loop per DAgger model: rollouts of a trained
                 or given model on the study's expressions, the expert's
                 labels, fine-tuning mixed with that model's imitation data
    evaluate     simple_evaluation.py, one run per evaluation (BasicSR and
                 NeuralSR on the benchmark problems; ablations NeuralSR only);
                 evaluations run at once, group by group (an evaluation
                 whose timing matters can have the GPU to itself)
    report       study.json + study.md: stage times, data sizes, the
                 training curves, every evaluation's table and the ablations

A stage whose outputs exist is skipped (so an interrupted study resumes,
and stages can be run one by one); `--force` reruns the chosen stages.
Every command, its wall time and its log file are recorded in
`<workdir>/study_log.json`; each command's output is in `<workdir>/logs/`.

The config (experiments/*.json) names the work folder, the master seed and,
per stage, the flags given to each script (a value `true` is a bare flag).
A model is one of three kinds:

    trained  {"conversion": C, "config": "training/....json", "overrides": {...}}
             train.py on conversion C's train file
    given    {"checkpoint": "models/neuralsr-tiny"}: an existing checkpoint
    dagger   {"dagger_from": M, "conversion": C, "options": {dagger.py flags,
             "--iterations" required}, "overrides": {train.py keys}}: DAgger
             from model M (trained or given), C being M's imitation data
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import dagger  # noqa: E402
import file_io  # noqa: E402
from progress import format_seconds  # noqa: E402

STAGES = ("expressions", "traces", "check", "convert", "train", "dagger", "evaluate", "report")
TOGETHER = {"check": "convert"}  # the check's jobs run beside the conversions' (they read the same files)


CONFIG_KEYS = ("workdir", "seed", "workers", "expressions", "traces", "conversions", "models", "evaluations",
               "ship")  # and free-text keys starting with "_"


class StudyError(Exception):
    """A bad config or a failed stage: one line for the user."""


@dataclass
class Job:
    """One command of a stage: what it runs, what it must leave behind, where its output goes."""

    stage: str
    name: str
    argv: list[str]
    outputs: list[Path]
    log: Path
    group: int = 0  # jobs of a stage run group by group; the jobs of one group run at once

    def done(self) -> bool:
        return all(path.exists() for path in self.outputs)


# --------------------------------------------------------------------------
# Config


def load_config(path: Path) -> dict:
    """The study config, with its sections checked (one-line errors)."""
    try:
        config = file_io.read_json(path)
    except file_io.DataFileError as error:
        raise StudyError(f"config {error}") from None
    if not isinstance(config, dict):
        raise StudyError(f"config {path}: a study config is a JSON object, got {type(config).__name__}")
    for key in config:
        if key not in CONFIG_KEYS and not key.startswith("_"):
            close = difflib.get_close_matches(key, CONFIG_KEYS, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(CONFIG_KEYS)}"
            raise StudyError(f"config {path}: unknown key {key!r}{hint}")
    required = ("workdir", "expressions", "traces", "conversions", "models", "evaluations")
    missing = [key for key in required if key not in config]
    if missing:
        raise StudyError(f"config {path}: missing {', '.join(missing)}")
    if not isinstance(config["workdir"], str) or not config["workdir"]:
        raise StudyError(f"config {path}: 'workdir' must be a folder name, got {config['workdir']!r}")
    for key in ("seed", "workers"):
        value = config.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StudyError(f"config {path}: {key!r} must be a whole number >= 0, got {value!r}")
    for key in ("expressions", "traces"):
        if not isinstance(config[key], dict):
            raise StudyError(f"config {path}: {key!r} must be an object of script flags, got {config[key]!r}")
    for key in ("conversions", "models", "evaluations"):
        if not isinstance(config[key], dict) or not all(isinstance(v, dict) for v in config[key].values()):
            raise StudyError(f"config {path}: {key!r} must be an object of named objects, got {config[key]!r}")
    for name, model in config["models"].items():
        problem = model_problem(model, config)
        if problem:
            raise StudyError(f"config {path}: model {name!r}: {problem}")
    for name, evaluation in config["evaluations"].items():
        group = evaluation.get("group", 0)
        if not isinstance(group, int) or isinstance(group, bool):
            raise StudyError(f"config {path}: evaluation {name!r}: 'group' must be a whole number, got {group!r}")
        if "model" in evaluation and evaluation["model"] not in config["models"]:
            raise StudyError(f"config {path}: evaluation {name!r} names unknown model {evaluation['model']!r}")
    if config.get("ship") is not None and config["ship"] not in config["models"]:
        raise StudyError(f"config {path}: ship names unknown model {config['ship']!r}")
    return config


def model_kind(model: dict) -> str:
    """'given' (an existing checkpoint), 'dagger' (DAgger from another model) or 'trained'."""
    return "given" if "checkpoint" in model else "dagger" if "dagger_from" in model else "trained"


def model_problem(model: dict, config: dict) -> str | None:
    """What is wrong with one model entry of the config, or None."""
    kind = model_kind(model)
    if kind == "given":
        return None if isinstance(model["checkpoint"], str) and model["checkpoint"] else \
            "'checkpoint' must be a checkpoint folder path"
    if not isinstance(model.get("overrides", {}), dict):
        return "'overrides' must be an object"
    if model.get("conversion") not in config["conversions"]:
        return f"names unknown conversion {model.get('conversion')!r}"
    if kind == "trained":
        return None if isinstance(model.get("config"), str) else "needs 'config' (a train.py run config path)"
    source = config["models"].get(model["dagger_from"])
    if not isinstance(source, dict) or model_kind(source) == "dagger":
        return f"dagger_from {model['dagger_from']!r} must name a trained or given model"
    options = model.get("options", {})
    if not isinstance(options, dict) or not isinstance(options.get("--iterations"), int) \
            or options["--iterations"] < 1:
        return "'options' must be an object of dagger.py flags with \"--iterations\" >= 1"
    return None


def flags(options: dict) -> list[str]:
    """{"--n": 5, "--split": true, "--skip": false} -> ["--n", "5", "--split"]."""
    argv = []
    for key, value in options.items():
        if key.startswith("_") or value is False or value is None:
            continue
        argv.append(key)
        if value is not True:
            argv.append(str(value))
    return argv


def override_flags(overrides: dict) -> list[str]:
    """train.py's `-o key=value` flags: {"max_steps": 5, "run_name": "x"} -> ["-o", "max_steps=5", "-o", "run_name=x"]."""
    argv = []
    for key, value in overrides.items():
        argv += ["-o", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return argv


def worker_count(config: dict) -> int:
    requested = int(config.get("workers", 0))
    return requested if requested > 0 else available_cores()


def available_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a Slurm allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------
# The plan: every stage's jobs


class Study:
    """Paths and jobs of one study config."""

    def __init__(self, config: dict, workdir: Path | None = None):
        self.config = config
        self.workdir = Path(workdir or config["workdir"])
        if not self.workdir.is_absolute():
            self.workdir = REPO / self.workdir
        self.seed = int(config.get("seed", 0))
        self.workers = worker_count(config)
        self.python = sys.executable

    # paths
    @property
    def expressions(self) -> Path:
        return self.workdir / "expressions.pkl.gz"

    @property
    def traces(self) -> Path:
        return self.workdir / "traces.pkl.gz"

    @property
    def check_file(self) -> Path:
        return self.workdir / "benchmark_check.json"

    def data(self, conversion: str) -> Path:
        return self.workdir / "data" / conversion

    def train_file(self, conversion: str) -> Path:
        return self.workdir / "data" / f"{conversion}.train.jsonl"

    def run_dir(self, model: str) -> Path:
        return self.workdir / "checkpoints" / model

    def dagger_dir(self, model: str) -> Path:
        return self.workdir / "dagger" / model

    def checkpoint(self, model: str) -> Path:
        """The model's checkpoint folder: trained (run folder's final/), given, or a DAgger loop's last."""
        entry = self.config["models"][model]
        kind = model_kind(entry)
        if kind == "given":
            path = Path(entry["checkpoint"])
            return path if path.is_absolute() else REPO / path
        if kind == "dagger":  # the last iteration's fine-tuned model
            last = dagger.iteration_folder(self.dagger_dir(model), entry["options"]["--iterations"])
            return last / dagger.TRAIN_RUN / "final"
        return self.run_dir(model) / "final"

    def models_of_kind(self, kind: str) -> list[str]:
        return [name for name, model in self.config["models"].items() if model_kind(model) == kind]

    def evaluation_dir(self, evaluation: str) -> Path:
        return self.workdir / "eval" / evaluation

    def log(self, stage: str, name: str) -> Path:
        return self.workdir / "logs" / f"{stage}-{name}.log"

    def script(self, name: str) -> list[str]:
        return [self.python, name]  # commands run in the repository root

    @staticmethod
    def arg(path: Path) -> str:
        """A path for a command line: relative to the repository root (where commands run) when inside it.

        So the commands, and what the scripts record of them (a checkpoint's
        train_file, a file's command), name no machine-specific folder.
        """
        path = Path(path)
        return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)

    # jobs
    def jobs(self, stage: str) -> list[Job]:
        return getattr(self, f"_jobs_{stage}")()

    def _jobs_expressions(self) -> list[Job]:
        options = {"--seed": self.seed, "--workers": self.workers, **self.config["expressions"]}
        argv = self.script("generate_expressions.py") + flags(options) + ["--output", self.arg(self.expressions)]
        return [Job("expressions", "expressions", argv, [self.expressions], self.log("expressions", "all"))]

    def _jobs_traces(self) -> list[Job]:
        options = {"--seed": self.seed, "--workers": self.workers, "--quiet": True, **self.config["traces"]}
        argv = (self.script("generate_traces.py") + ["--expressions_file", self.arg(self.expressions)]
                + flags(options) + ["--output", self.arg(self.traces)])
        return [Job("traces", "traces", argv, [self.traces], self.log("traces", "all"))]

    def _jobs_check(self) -> list[Job]:
        argv = [self.python, self.arg(Path(__file__).resolve()), "--check_benchmarks", self.arg(self.expressions),
                self.arg(self.traces), self.arg(self.check_file)]
        return [Job("check", "benchmarks", argv, [self.check_file], self.log("check", "benchmarks"))]

    def _jobs_convert(self) -> list[Job]:
        jobs = []
        for name, options in self.config["conversions"].items():
            options = {"--seed": self.seed, "--workers": self.workers, "--quiet": True, "--split": True, **options}
            argv = (self.script("one_step_conversion.py") + ["--input", self.arg(self.traces)] + flags(options)
                    + ["--output", self.arg(self.data(name)), "--overwrite"])
            jobs.append(Job("convert", name, argv, [self.train_file(name)], self.log("convert", name)))
        return jobs

    def _jobs_train(self) -> list[Job]:
        jobs = []
        for name in self.models_of_kind("trained"):
            model = self.config["models"][name]
            overrides = {"train_file": self.arg(self.train_file(model["conversion"])),
                         "output_dir": self.arg(self.run_dir(name).parent),
                         "run_name": name, "seed": self.seed, "disable_tqdm": True, **model.get("overrides", {})}
            argv = self.script("train.py") + ["--config", model["config"]] + override_flags(overrides)
            jobs.append(Job("train", name, argv, [self.checkpoint(name) / "ttsr_train_meta.json"], self.log("train", name)))
        return jobs

    def _jobs_dagger(self) -> list[Job]:
        jobs = []
        for name in self.models_of_kind("dagger"):
            model = self.config["models"][name]
            options = {"--seed": self.seed, "--workers": self.workers, "--quiet": True, **model["options"]}
            argv = (self.script("dagger.py")
                    + ["--checkpoint", self.arg(self.checkpoint(model["dagger_from"])),
                       "--expressions_file", self.arg(self.expressions),
                       "--imitation_data", self.arg(self.train_file(model["conversion"])),
                       "--output_dir", self.arg(self.dagger_dir(name)), "--resume"]  # a rerun continues the loop
                    + flags(options) + override_flags({"disable_tqdm": True, **model.get("overrides", {})}))
            jobs.append(Job("dagger", name, argv, [self.checkpoint(name) / "ttsr_train_meta.json"],
                            self.log("dagger", name)))
        return jobs

    def _jobs_evaluate(self) -> list[Job]:
        jobs = []
        for name, evaluation in self.config["evaluations"].items():
            options = dict(evaluation)
            model = options.pop("model", None)
            group = int(options.pop("group", 0))
            options = {"--workers": options.pop("workers", self.workers), **options}
            argv = self.script("simple_evaluation.py") + flags(options) + ["--output_dir", self.arg(self.evaluation_dir(name)),
                                                                          "--quiet"]
            if model is not None:
                argv += ["--checkpoint", self.arg(self.checkpoint(model))]
            jobs.append(Job("evaluate", name, argv, [self.evaluation_dir(name) / "evaluation.json"],
                            self.log("evaluate", name), group=group))
        return jobs

    def _jobs_report(self) -> list[Job]:
        return []  # done in this process


# --------------------------------------------------------------------------
# Running


def job_environment(side_by_side: int, cores: int | None = None) -> dict:
    """A job's environment: unbuffered output and, when `side_by_side` jobs run at once, each one's share of the
    cores as its thread count (OMP_NUM_THREADS; one the user set is kept). Torch starts a thread per core in
    every process, and the jobs' threads then spin against each other: two NeuralSR evaluations on two cores
    took 30 s each side by side, 14 s each with one thread apiece (docs/LOG.md, session 8)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if side_by_side > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (cores or available_cores()) // side_by_side))
    return env


def run_jobs(study: Study, stage: str, jobs: list[Job], parallel: bool, force: bool, journal: list) -> None:
    """Run a stage's jobs (all at once when `parallel`); a failure raises StudyError naming its log."""
    todo = [job for job in jobs if force or not job.done()]
    for job in jobs:
        if job not in todo:
            print(f"  {job.stage}/{job.name}: outputs exist, skipped (--force reruns)", flush=True)
    if not todo:
        return
    for job in todo:
        if job.stage == "train" and study.run_dir(job.name).exists():
            shutil.rmtree(study.run_dir(job.name))  # an unfinished run of ours (no final checkpoint)
        job.log.parent.mkdir(parents=True, exist_ok=True)
    if parallel:  # e.g. a timed evaluation alone first (group 0), then the rest together
        groups = [[job for job in todo if job.group == number] for number in sorted({job.group for job in todo})]
    else:
        groups = [[job] for job in todo]
    for group in groups:
        running = []
        for job in group:
            handle = open(job.log, "w")
            handle.write("$ " + shlex.join(job.argv) + "\n")
            handle.flush()
            process = subprocess.Popen(job.argv, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO,
                                       env=job_environment(len(group)))
            running.append((job, process, handle, time.perf_counter()))
        try:
            finished = wait_all(running)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM from a scheduler or `timeout`): stop our commands too
            for _, process, handle, _ in running:
                if process.poll() is None:
                    process.terminate()
                handle.close()
            raise
        for job, code, handle, seconds in finished:
            handle.close()
            journal.append({"stage": job.stage, "name": job.name, "command": shlex.join(job.argv),
                            "seconds": round(seconds, 2), "exit": code, "log": str(job.log.relative_to(study.workdir))})
            if code != 0:
                tail = last_line(job.log)
                raise StudyError(f"{job.stage}/{job.name} failed (exit {code}): {tail} (log: {job.log})")
            print(f"  {job.stage}/{job.name}: {seconds:.1f} s — {last_line(job.log)}", flush=True)


def wait_all(running: list, poll_seconds: float = 0.2, report_every: float = 60.0) -> list:
    """Wait for every (job, process, log handle, start time); (job, exit code, handle, seconds) in input order.

    Every `report_every` seconds a line names the jobs still running, with
    the last line of each one's log (the scripts' own progress and ETA).
    """
    ended = {}
    last_report = time.perf_counter()
    while len(ended) < len(running):
        for index, (job, process, handle, started) in enumerate(running):
            if index not in ended and process.poll() is not None:
                ended[index] = (job, process.returncode, handle, time.perf_counter() - started)
        if len(ended) < len(running):
            time.sleep(poll_seconds)
            if time.perf_counter() - last_report >= report_every:
                last_report = time.perf_counter()
                for index, (job, _, handle, started) in enumerate(running):
                    if index not in ended:
                        handle.flush()
                        print(f"  ... {job.stage}/{job.name} running for {format_seconds(last_report - started)}: "
                              f"{last_line(job.log)[:160]}", flush=True)
    return [ended[index] for index in range(len(running))]


def last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


# --------------------------------------------------------------------------
# The benchmark check


def check_benchmarks(expressions_path: Path, traces_path: Path, output: Path) -> dict:
    """Re-check every traced expression against the benchmark problems; write and return the result."""
    import expression_parser
    import problems

    expressions = file_io.load(expressions_path, "expressions")
    traces = file_io.load(traces_path, "traces")
    traced_ids = {int(record["expression_id"]) for record in traces.records}
    by_id = {int(record["id"]): record for record in expressions.records}
    unknown = sorted(traced_ids - set(by_id))
    matches = []
    for expression_id in sorted(traced_ids & set(by_id)):
        record = by_id[expression_id]
        tree = expression_parser.parse(record["expression"])
        name = problems.matches_benchmark(tree, int(record["n_vars"]))
        if name is not None:
            matches.append({"id": expression_id, "expression": record["expression"], "benchmark": name})
    result = {"expressions_file": str(expressions_path), "traces_file": str(traces_path),
              "traced_expressions": len(traced_ids), "unknown_ids": unknown[:20], "n_unknown_ids": len(unknown),
              "benchmark_matches": matches, "n_benchmark_matches": len(matches),
              "rejected_as_benchmark_at_generation": expressions.metadata.get("rejections", {}).get("benchmark"),
              "method": "problems.matches_benchmark: equal within 1e-9 on 64 fixed points under every "
                        "assignment of variables, for each of the 21 benchmark problems",
              "clean": not matches and not unknown}
    with file_io.atomic_open(output, "w") as handle:
        json.dump(result, handle, indent=2)
    return result


# --------------------------------------------------------------------------
# The report


def training_curve(run_dir: Path) -> dict:
    """Loss against step from a finished run's trainer_state.json."""
    state_file = run_dir / "trainer_state.json"
    if not state_file.exists():
        return {}
    history = json.loads(state_file.read_text()).get("log_history", [])
    return {"train": [[entry["step"], entry["loss"]] for entry in history if "loss" in entry],
            "eval": [[entry["step"], entry["eval_loss"]] for entry in history if "eval_loss" in entry],
            "tokens_per_second": [entry["tokens_per_second"] for entry in history if "tokens_per_second" in entry],
            "final": {key: value for key, value in (history[-1] if history else {}).items()
                      if key.startswith("eval_") or key in ("train_runtime", "train_loss")}}


def dagger_summary(log_path: Path) -> dict:
    """The loop's method, and per iteration: its seconds, each step's seconds and what its summary counted."""
    if not log_path.exists():
        return {}
    log = json.loads(log_path.read_text())
    return {"method": log.get("parameters", {}).get("method", "dagger"),
            "complete": log.get("complete"), "final_checkpoint": log.get("final_checkpoint"),
            "iterations": [{"iteration": entry["iteration"], "seconds": entry.get("seconds"),
                            "steps": {step["name"]: step.get("seconds") for step in entry["steps"]},
                            **entry.get("summary", {})} for entry in log["iterations"]]}


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def evaluation_summary(path: Path) -> dict:
    """Per method: runs, solved, median generations/evaluations to solve, time per generation, well-formed."""
    report = json.loads(path.read_text())
    runs = report["runs"]
    summary = {}
    for method in dict.fromkeys(run["method"] for run in runs):
        mine = [run for run in runs if run["method"] == method]
        generations = sum(run["generations"] for run in mine)
        solved = [run for run in mine if run["solved"] and run["generations_to_solve"] is not None]
        to_solve = sorted(run["generations_to_solve"] for run in solved)  # over solved runs, as simple_evaluation
        evals_to_solve = sorted(run["evaluations_to_solve"] for run in solved)
        wall = report["methods"][method]["seconds"]
        proposals = sum(run.get("n_proposals", 0) for run in mine)
        row = {"runs": len(mine), "solved": sum(run["solved"] for run in mine),
               "median_generations_to_solve": median(to_solve), "median_evaluations_to_solve": median(evals_to_solve),
               "generations": generations, "wall_seconds": wall,
               # one core per BasicSR run; NeuralSR: the batched call's wall time over all its problem-generations
               "seconds_per_generation": (sum(run["seconds"] for run in mine) / generations if method != "neural"
                                          else wall / generations) if generations else None}
        if proposals:
            row["well_formed_rate"] = sum(run["n_neural"] for run in mine) / proposals
        row["per_problem"] = {problem: [sum(run["solved"] for run in mine if run["problem"] == problem),
                                        sum(run["problem"] == problem for run in mine)]
                              for problem in dict.fromkeys(run["problem"] for run in mine)}
        summary[method] = row
    return summary


def median(values: list) -> float | None:
    if not values:
        return None
    middle = len(values) // 2
    return float(values[middle]) if len(values) % 2 else (values[middle - 1] + values[middle]) / 2.0


def build_report(study: Study, journal: list) -> dict:
    """study.json: the config, every command and its time, data sizes, curves and evaluation summaries."""
    workdir = study.workdir
    report = {"config": study.config, "workdir": study.arg(workdir), "workers": study.workers, "commands": journal}
    if study.expressions.exists():
        meta = file_io.load(study.expressions, "expressions").metadata
        report["expressions"] = {key: meta.get(key) for key in ("n_records", "rejections", "n_candidates")
                                 if key in meta} or {"metadata_keys": sorted(meta)}
    if study.check_file.exists():
        check = json.loads(study.check_file.read_text())
        report["benchmark_check"] = {key: check[key] for key in ("traced_expressions", "n_benchmark_matches",
                                                                  "n_unknown_ids", "clean", "method")}
    if study.traces.exists():
        traces = file_io.load(study.traces, "traces")
        report["traces"] = {"records": len(traces.records),
                            "generations": sum(int(record["n_generations"]) for record in traces.records),
                            "solved": sum(bool(record["solved"]) for record in traces.records)}
    report["conversions"] = {}
    for name in study.config["conversions"]:
        train_file = study.train_file(name)
        sidecar = Path(str(study.data(name)) + ".json")
        report["conversions"][name] = {
            "train_examples": count_lines(train_file),
            "val_examples": count_lines(study.workdir / "data" / f"{name}.val.jsonl"),
            "sidecar": json.loads(sidecar.read_text()) if sidecar.exists() else None}
    # A trained model's run folder, a DAgger model's last fine-tuning run (a given model has none here).
    report["models"] = {name: training_curve(study.checkpoint(name).parent) for name in study.config["models"]}
    report["dagger"] = {name: dagger_summary(study.dagger_dir(name) / dagger.LOG_NAME)
                        for name in study.models_of_kind("dagger")}
    report["evaluations"] = {}
    for name in study.config["evaluations"]:
        path = study.evaluation_dir(name) / "evaluation.json"
        if path.exists():
            report["evaluations"][name] = {"settings": study.config["evaluations"][name],
                                           "methods": evaluation_summary(path)}
    return report


def plot_training_curves(report: dict, path: Path) -> Path | None:
    """Train and eval loss against step, one line pair per model (PNG); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for name, curve in report.get("models", {}).items():
        if curve.get("train"):
            steps, losses = zip(*curve["train"])
            line, = axis.plot(steps, losses, label=f"{name} (train)")
            if curve.get("eval"):
                steps, losses = zip(*curve["eval"])
                axis.plot(steps, losses, "o--", color=line.get_color(), label=f"{name} (val)")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (target tokens)")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with file_io.atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
    return path


def markdown(report: dict) -> str:
    """The study's tables as markdown (evaluations, then data and training)."""
    lines = ["# Distillation study", "", f"work folder `{report['workdir']}`, {report['workers']} workers", ""]
    lines += ["| evaluation | method | solved | median gens to solve | median evals to solve | s / generation "
              "| well-formed |", "|---|---|---|---|---|---|---|"]
    for name, evaluation in report.get("evaluations", {}).items():
        for method, row in evaluation["methods"].items():
            wf = row.get("well_formed_rate")
            spg = row["seconds_per_generation"]
            lines.append(f"| {name} | {method} | {row['solved']}/{row['runs']} | {fmt(row['median_generations_to_solve'])} "
                         f"| {fmt(row['median_evaluations_to_solve'])} | {'-' if spg is None else f'{spg * 1e6:,.0f} µs'} "
                         f"| {'-' if wf is None else f'{wf:.1%}'} |")
    lines += ["", "| stage | job | seconds |", "|---|---|---|"]
    lines += [f"| {entry['stage']} | {entry['name']} | {entry['seconds']:.1f} |" for entry in report["commands"]]
    lines += ["", "```json", json.dumps({key: report.get(key) for key in ("expressions", "traces", "benchmark_check")},
                                         indent=1), "```"]
    for name, conversion in report.get("conversions", {}).items():
        lines.append(f"- conversion `{name}`: {conversion['train_examples']:,} train / "
                     f"{conversion['val_examples']:,} val examples")
    for name, curve in report.get("models", {}).items():
        if curve.get("train"):
            first, last = curve["train"][0], curve["train"][-1]
            lines.append(f"- model `{name}`: loss {first[1]:.3f} (step {first[0]}) -> {last[1]:.3f} (step {last[0]}); "
                         f"final {curve['final']}")
    for name, loop in report.get("dagger", {}).items():
        dagger = loop.get("method", "dagger") == "dagger"
        method, examples = ("DAgger", "DAgger examples") if dagger else ("Expert iteration", "examples from solved runs")
        for entry in loop.get("iterations", []):
            lines.append(f"- {method} `{name}` iteration {entry['iteration']}: {entry.get('traces')} rollouts "
                         f"(learner solved {fmt_share(entry.get('learner_solved_fraction'))}), "
                         f"{entry.get('round_examples', entry.get('dagger_examples'))} {examples}; "
                         f"{fmt(entry.get('seconds'))} s")
    return "\n".join(lines) + "\n"


def fmt_share(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def fmt(value) -> str:
    return "-" if value is None else f"{value:,.1f}".removesuffix(".0")


# --------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", default=str(REPO / "experiments" / "distill-h100.json"),
                        help="study config JSON (experiments/*.json)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated stages to run, in this order: {','.join(STAGES)}")
    parser.add_argument("--workdir", default=None, help="work folder (default: the config's workdir)")
    parser.add_argument("--force", action="store_true", help="rerun the chosen stages even where outputs exist")
    parser.add_argument("--sequential", action="store_true",
                        help="run a stage's jobs one after the other (default: trainings and evaluations at once)")
    parser.add_argument("--check_benchmarks", nargs=3, metavar=("EXPRESSIONS", "TRACES", "OUTPUT"),
                        help="internal: the check stage's command")
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        return run_study(args)
    # A `timeout` or scheduler stop ends the running commands too. The caller's
    # handler comes back afterwards: a test runner that calls main() keeps its own.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run_study(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_study(args) -> int:
    """main() after parsing: the chosen stages, or the benchmark check; the exit code."""
    try:
        if args.check_benchmarks:
            with file_io.exit_on_data_error():
                result = check_benchmarks(*map(Path, args.check_benchmarks))
            print(f"{result['traced_expressions']} traced expressions: {result['n_benchmark_matches']} equivalent "
                  f"to a benchmark problem, {result['n_unknown_ids']} not in the expressions file")
            return 0 if result["clean"] else 1
        config = load_config(Path(args.config))
        stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
        unknown = [stage for stage in stages if stage not in STAGES]
        if unknown:
            raise StudyError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        study = Study(config, args.workdir)
        try:
            study.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # the folder or one above it is a file, or no permission
            raise StudyError(f"workdir {study.workdir}: cannot create the folder ({error.strerror or error})") from None
        journal_path = study.workdir / "study_log.json"
        journal = json.loads(journal_path.read_text()) if journal_path.exists() else []
        ordered = [stage for stage in STAGES if stage in stages]
        print(f"study {args.config} -> {study.workdir} ({study.workers} workers); stages {', '.join(ordered)}", flush=True)
        started = time.perf_counter()
        steps = []  # (stage, stages whose jobs run beside it)
        for stage in ordered:
            if args.sequential:
                steps.append((stage, []))
            elif not (stage in TOGETHER and TOGETHER[stage] in ordered):  # else it runs with its partner
                steps.append((stage, [other for other, partner in TOGETHER.items()
                                      if partner == stage and other in ordered]))
        for number, (stage, partners) in enumerate(steps, 1):
            elapsed = time.perf_counter() - started
            jobs = study.jobs(stage) + [job for other in partners for job in study.jobs(other)]
            label = " + ".join([stage, *partners])
            print(f"[{number}/{len(steps)}] {label} (elapsed {format_seconds(elapsed)})", flush=True)
            if stage != "report":
                parallel = stage in ("convert", "train", "dagger", "evaluate") and not args.sequential
                try:
                    run_jobs(study, stage, jobs, parallel, args.force, journal)
                finally:
                    with file_io.atomic_open(journal_path, "w") as handle:
                        json.dump(journal, handle, indent=1)
        if "report" in ordered:
            report = build_report(study, journal)
            with file_io.atomic_open(study.workdir / "study.json", "w") as handle:
                json.dump(report, handle, indent=1, default=str)
            plot_training_curves(report, study.workdir / "training_curves.png")
            text = markdown(report)
            with file_io.atomic_open(study.workdir / "study.md", "w") as handle:
                handle.write(text)
            print(text)
        print(f"study done in {format_seconds(time.perf_counter() - started)}: {study.workdir}", flush=True)
        return 0
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished stages are kept (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
