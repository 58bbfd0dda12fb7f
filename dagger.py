"""The improvement loop, DAgger or expert iteration: the learner rolls out, its data is made, it is fine-tuned.

    python dagger.py --checkpoint checkpoints/onestep-tiny/final \\
        --expressions_file datasets/expressions/arith_1k_c05_X.pkl.gz \\
        --imitation_data datasets/training/onestep_basic_gen1k_arith_1k_c05_X.train.jsonl \\
        --iterations 3 --output_dir runs/dagger-tiny --num_generations 50 --max_expressions 200

Imitation learning alone trains the model on BasicSR's states; NeuralSR
then visits states of its own, where its errors compound. DAgger (Ross et
al., 2011) asks the expert what it would do in the LEARNER's states and
trains on that. One iteration i = 1..N, in `{output_dir}/iter{i:02d}/`:

    traces   generate_traces.py --checkpoint <current> --batch_size B  -> traces.pkl.gz
             (NeuralSR rollouts of the current model on the expressions)
    relabel  dagger_relabel.py                                         -> traces.dagger.pkl.gz
             (BasicSR's population update on every learner state)
    convert  one_step_conversion.py --dagger --split                   -> data/dagger.{train,val}.jsonl
    mix      (in process, see below)                                   -> data/mixed.train.jsonl
    train    train.py --config <config> -o init_from=<current> ...     -> train/final/
             (fine-tune; train/final becomes the current checkpoint)

Expert iteration (`--method expert_iteration`). The same loop without the
expert: the learner's own rollouts are filtered by outcome and it is tuned on
its successes, as Stream of Search and STaR do (Anthony et al., 2017, named
the scheme). The relabel stage is dropped, and the conversion keeps the runs
that solved their problem (`one_step_conversion.py --solved_only`) and, with
`--ei_targets ancestors` (default), only the moves that led to the solution
(the ancestry of the final best individual, `--ancestors_only`); `all`
keeps every child of a solved run. The targets are the learner's proposals
and the fallback children (BasicSR's moves where the model's output was
unusable) that made it into those runs. Its data files are
data/solved.{train,val}.jsonl. A round whose rollouts solve nothing in the
train split gives no rows; when no round of the mix has any, the loop stops
with an error rather than tune on imitation data alone.

Each stage runs through its importable `main(argv)` (not a subprocess), so
its own one-line errors are what the user sees, and the loop stops at the
first failing stage. Every input (checkpoint, expressions file, imitation
data, the fine-tuning config with its overrides, the output folder) is
checked before iteration 1, so a bad one is an error at once, not after
hours of rollouts. `--dry_run` checks them too, then prints the commands
(the checkpoints of later iterations as the paths they will have) and runs
nothing.

Mixing rule (`--mix`, `--imitation_ratio`). The fine-tuning set of
iteration i holds the DAgger (or expert-iteration) rows of
    aggregate (default)  every round so far, 1..i: DAgger's dataset aggregation;
    latest               round i only;
plus rows of the original imitation data (`--imitation_data`, the one-step
train JSONL the checkpoint was trained on), so the model keeps seeing the
expert's own states: each imitation row is kept with probability
min(1, R x DAgger rows / imitation rows) with R = --imitation_ratio (about R
imitation rows per DAgger row; `all` keeps them all, 0 none), one seeded
draw per row (derive_seed(seed, iteration)). train.py shuffles the rows. The
validation file is round i's val part: the expert's labels on the current
learner's states (expert iteration: the solved runs' moves), for expressions
kept out of training.

Seeds: iteration i runs every stage with derive_seed(--seed, i) mod 2^31
(trace sampling, the expert's draws, the split, the mix, training).

The fine-tuning config is --config (default training/dagger-tiny.json) with
the user's `-o key=value` overrides, then the loop's own: init_from, tokenizer
(both the current checkpoint: the vocabulary must stay the model's),
train_file, val_file, output_dir, run_name and seed. The DAgger data's
tokenizer is checked to equal the checkpoint's before training.

Log: `{output_dir}/dagger_log.json`, rewritten (atomically) after every
stage: the parameters, and per iteration each stage's command, status and
seconds, the mix counts, the checkpoint going in and coming out; `complete`
is true once every iteration is done. An existing log is refused unless
--resume, which skips the finished iterations (same parameters; a larger
--iterations extends the run) and redoes an unfinished one from its start
(its record moves to `abandoned`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import file_io
import train
from random_stream import RandomStream, derive_seed, make_generator

REPO = Path(__file__).resolve().parent
SCRIPT = "dagger.py"
LOG_NAME = "dagger_log.json"
LOG_FORMAT, LOG_VERSION = "ttsr-dagger-log", 1
DEFAULT_CONFIG = "training/dagger-tiny.json"
TRAIN_RUN = "train"
MIXES = ("aggregate", "latest")
METHODS = ("dagger", "expert_iteration")
EI_TARGETS = ("ancestors", "all")
ROUND_DATA = {"dagger": "dagger", "expert_iteration": "solved"}  # name of a round's data files per method
CONTEXT_TYPES = ("basic", "rich", "superrich")  # format_utils.CONTEXT_TYPES (not imported: a dry run stays light)
MIX_STREAM = 1  # the mix's draws: make_generator(iteration seed, MIX_STREAM)
# Config keys the loop sets itself; a user override of one would break the loop.
LOOP_KEYS = ("init_from", "tokenizer", "train_file", "val_file", "output_dir", "run_name", "seed",
             "resume_from_checkpoint")
# generate_traces.py flags the loop sets itself.
LOOP_TRACE_FLAGS = ("--expressions_file", "--checkpoint", "--batch_size", "--output", "--output_dir", "--seed")
# Options that do not change what the loop computes: left out of the comparison on --resume.
EXECUTION_OPTIONS = ("iterations", "resume", "dry_run", "quiet", "workers")


class UsageError(Exception):
    """Bad options, or an output folder that would be clobbered; one `error:` line, exit 2."""


class StageError(Exception):
    """A stage exited with an error (it printed its own message); `status` is its exit code."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------
# The steps of one iteration


@dataclass
class Step:
    """One stage call: a script's main(argv), or the in-process mix (script None)."""

    name: str
    script: str | None
    argv: list[str]
    description: str = ""  # what the mix does (it has no command line)

    def command(self) -> str:
        if self.script is None:
            return f"# {self.name}: {self.description}"
        return shlex.join(["python", self.script, *self.argv])


@dataclass
class Iteration:
    """Paths and settings of one iteration."""

    number: int
    folder: Path
    seed: int
    checkpoint: str  # the model going in
    overwrite: bool = False  # redoing an unfinished iteration: its stages may replace their outputs
    method: str = "dagger"
    paths: dict = field(init=False)

    def __post_init__(self):
        self.paths = iteration_paths(self.folder, self.method)


def iteration_paths(folder: Path, method: str = "dagger") -> dict[str, Path]:
    """The files of the iteration in `folder` (see the module docstring); `round*` are the round's own data."""
    data, name = folder / "data", ROUND_DATA[method]
    return {
        "traces": folder / "traces.pkl.gz", "relabelled": folder / "traces.dagger.pkl.gz",
        "round": data / f"{name}.jsonl", "round_train": data / f"{name}.train.jsonl",
        "round_val": data / f"{name}.val.jsonl", "tokenizer": data / "tokenizer",
        "mixed": data / "mixed.train.jsonl", "final": folder / TRAIN_RUN / "final",
    }


def iteration_folder(output_dir, number: int) -> Path:
    return Path(output_dir) / f"iter{number:02d}"


def iteration_seed(seed: int, number: int) -> int:
    """The seed of every stage of iteration `number` (< 2^31: train.py seeds numpy's legacy state with it)."""
    return derive_seed(seed, number) % 2**31


def iteration_steps(args, it: Iteration) -> list[Step]:
    """The stage calls of one iteration, in order: five for DAgger, four for expert iteration (no relabel)."""
    paths, seed = it.paths, str(it.seed)
    common = (["--overwrite"] if it.overwrite else []) + (["--quiet"] if args.quiet else [])
    traces = ["--expressions_file", str(args.expressions_file), "--checkpoint", it.checkpoint,
              "--batch_size", str(args.batch_size), "--population_size", str(args.population_size),
              "--num_generations", str(args.num_generations), "--seed", seed, "--output", str(paths["traces"])]
    if args.max_expressions is not None:
        traces += ["--max_expressions", str(args.max_expressions)]
    relabel = ["--input", str(paths["traces"]), "--output", str(paths["relabelled"]), "--seed", seed,
               "--workers", str(args.workers)]
    if args.method == "dagger":
        targets = ["--input", str(paths["relabelled"]), "--dagger"]
    else:
        targets = ["--input", str(paths["traces"]), "--solved_only"]
        targets += ["--ancestors_only"] if args.ei_targets == "ancestors" else []
    convert = [*targets, "--split", "--val_fraction", str(args.val_fraction),
               "--context_type", args.context_type, "--parentheses", checkpoint_prompt(args)["parentheses"],
               "--sample_fraction", str(args.sample_fraction), "--seed", seed,
               "--output", str(paths["round"]), "--tokenizer_dir", str(paths["tokenizer"]),
               "--workers", str(args.workers)]
    fine_tune = ["--config", str(args.config)]
    for override in fine_tune_overrides(args, it):
        fine_tune += ["-o", override]
    rounds = " + ".join(str(p) for p in dagger_rounds(args, it.number))
    ratio = "all" if args.imitation_ratio is None else f"{args.imitation_ratio:g}"
    relabelling = [Step("relabel", "dagger_relabel.py", relabel + common)] if args.method == "dagger" else []
    return [
        Step("traces", "generate_traces.py", traces + shlex.split(args.trace_args) + common),
        *relabelling,
        Step("convert", "one_step_conversion.py", convert + common),
        Step("mix", None, [], f"{args.mix}: {rounds} + {args.imitation_data} "
                              f"(imitation_ratio {ratio}) -> {paths['mixed']}"),
        Step("train", "train.py", fine_tune),
    ]


def fine_tune_overrides(args, it: Iteration) -> list[str]:
    """The train.py overrides of an iteration's fine-tuning: --quiet's, the user's, then the loop's own."""
    paths = it.paths
    quiet = ["disable_tqdm=true"] if args.quiet else []  # train.py's bar; a user's -o disable_tqdm=... wins
    return [*quiet, *args.override, f"init_from={it.checkpoint}", f"tokenizer={it.checkpoint}",
            f"train_file={paths['mixed']}", f"val_file={paths['round_val']}",
            f"output_dir={it.folder}", f"run_name={TRAIN_RUN}", f"seed={it.seed}"]


def dagger_rounds(args, number: int) -> list[Path]:
    """The rounds' train files iteration `number` fine-tunes on (the mixing rule)."""
    first = 1 if args.mix == "aggregate" else number
    return [iteration_paths(iteration_folder(args.output_dir, n), args.method)["round_train"]
            for n in range(first, number + 1)]


# --------------------------------------------------------------------------
# Running a step


def run_step(step: Step, args, it: Iteration) -> dict:
    """Run one step; its log record. StageError when a stage exits with an error."""
    started = time.perf_counter()
    record = {"name": step.name, "command": step.command(), "argv": step.argv}
    if step.script is None:
        record.update(mix_training_data(dagger_rounds(args, it.number), Path(args.imitation_data),
                                        it.paths["mixed"], args.imitation_ratio, it.seed))
        if record["round_rows"] == 0:
            why = ("no rollout in the train split solved its problem (expert iteration learns from solved runs "
                   "only): roll out longer or on more expressions (--num_generations, --max_expressions)"
                   if args.method == "expert_iteration" else "the rollouts gave no DAgger labels")
            raise StageError(f"iteration {it.number}, stage mix: the rounds hold no training rows; {why}", 1)
        check_tokenizer(it.paths["tokenizer"], Path(it.checkpoint))
    else:
        if step.name == "train":
            before = set(it.folder.glob(f"{TRAIN_RUN}*"))
        status = call_main(step.script, step.argv)
        if status != 0:
            raise StageError(f"iteration {it.number}, stage {step.name} failed (exit {status}): {step.command()}",
                             status)
        if step.name == "train":
            record["checkpoint"] = str(new_checkpoint(it.folder, before))
    record.update(status="ok", seconds=round(time.perf_counter() - started, 3))
    return record


def call_main(script: str, argv: list[str]) -> int:
    """A stage script's main(argv) as an exit status (stages exit through SystemExit on data errors)."""
    main = importlib.import_module(script.removesuffix(".py")).main
    try:
        status = main(list(argv))
    except SystemExit as exit:
        status = exit.code
    if status is None:
        return 0
    return status if isinstance(status, int) else 1


def new_checkpoint(folder: Path, before: set) -> Path:
    """The final checkpoint of the run folder train.py just made in `folder`.

    train.py adds a suffix to a run folder that exists already (a redone
    iteration), so the folder is found as the one that is new.
    """
    created = sorted(set(folder.glob(f"{TRAIN_RUN}*")) - before)
    finals = [run / "final" for run in created if (run / "final" / train.CHECKPOINT_META).exists()]
    if len(finals) != 1:
        raise StageError(f"{folder}: training left {len(finals)} complete final checkpoints, expected 1", 1)
    return finals[0]


def check_tokenizer(data_tokenizer: Path, checkpoint: Path) -> None:
    """UsageError unless the DAgger data's tokenizer has the checkpoint's vocabulary."""
    import tokenizer as tk

    if not (checkpoint / "tokenizer.json").exists():
        raise UsageError(f"{checkpoint}: holds no tokenizer.json (not a checkpoint written by train.py)")
    data_vocabulary = tk.load_tokenizer(data_tokenizer).get_vocab()
    if data_vocabulary != tk.load_tokenizer(checkpoint).get_vocab():
        raise UsageError(f"{data_tokenizer}: the DAgger data's tokenizer ({len(data_vocabulary)} tokens) differs "
                         f"from the checkpoint's {checkpoint} (other variables or constants than its training data)")


# --------------------------------------------------------------------------
# Mixing


def count_rows(path: Path) -> int:
    """Non-blank lines of a JSONL file."""
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def mix_training_data(rounds: list[Path], imitation: Path, output: Path, ratio: float | None, seed: int) -> dict:
    """Write the rows of `rounds` and a seeded share of the imitation rows to `output` (atomically).

    `ratio` None keeps every imitation row; otherwise each is kept with
    probability min(1, ratio x round rows / imitation rows).
    """
    round_rows = sum(count_rows(path) for path in rounds)
    available = count_rows(imitation)
    if ratio is None:
        keep = 1.0
    else:
        keep = min(1.0, ratio * round_rows / available) if available else 0.0
    draw = RandomStream(make_generator(seed, MIX_STREAM)).random
    imitation_rows = 0
    with file_io.atomic_open(output, "w") as handle:
        with open(imitation, encoding="utf-8") as lines:
            for line in lines:
                if line.strip() and (keep >= 1.0 or draw() < keep):
                    handle.write(line if line.endswith("\n") else line + "\n")
                    imitation_rows += 1
        for path in rounds:
            with open(path, encoding="utf-8") as lines:
                for line in lines:
                    if line.strip():
                        handle.write(line if line.endswith("\n") else line + "\n")
    return {"rounds": [str(p) for p in rounds], "round_rows": round_rows, "imitation_rows": imitation_rows,
            "imitation_available": available, "imitation_keep_probability": keep, "output": str(output)}


# --------------------------------------------------------------------------
# The loop and its log


def recorded_parameters(args) -> dict:
    """The options that decide what the loop computes (compared on --resume)."""
    return {key: value for key, value in vars(args).items() if key not in EXECUTION_OPTIONS}


def new_log(args, argv: list[str]) -> dict:
    return {"format": LOG_FORMAT, "version": LOG_VERSION, "command": shlex.join(["python", SCRIPT, *argv]),
            "parameters": recorded_parameters(args), "iterations_requested": args.iterations,
            "code_version": file_io.code_version(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "iterations": [], "complete": False, "final_checkpoint": None}


def write_log(path: Path, log: dict) -> None:
    with file_io.atomic_open(path, "w") as handle:
        json.dump(log, handle, indent=2)
        handle.write("\n")


def resumed_log(args, path: Path) -> dict:
    """The log of an earlier run of the same loop, its unfinished iteration set aside (UsageError otherwise)."""
    try:
        log = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: cannot read the loop log ({error})") from None
    if log.get("format") != LOG_FORMAT:
        raise UsageError(f"{path}: not a {LOG_FORMAT} file")
    expected = json.loads(json.dumps(recorded_parameters(args)))
    for key, value in (("method", "dagger"), ("ei_targets", None)):  # logs written before expert iteration
        log["parameters"].setdefault(key, value)
    differing = sorted(key for key in expected.keys() | log["parameters"].keys()
                       if expected.get(key) != log["parameters"].get(key))
    if differing:
        raise UsageError(f"{path}: made with other options ({', '.join(differing)} differ); "
                         f"use another --output_dir")
    # An unfinished iteration is redone from its start; its record is kept aside, not forgotten.
    log.setdefault("abandoned", []).extend(entry for entry in log["iterations"] if not entry.get("complete"))
    log["iterations"] = [entry for entry in log["iterations"] if entry.get("complete")]
    for entry in log["iterations"]:
        if not (Path(entry["checkpoint_out"]) / train.CHECKPOINT_META).exists():
            raise UsageError(f"{entry['checkpoint_out']}: checkpoint of finished iteration "
                             f"{entry['iteration']} is missing")
    log.update(iterations_requested=args.iterations, complete=False)
    return log


def plan(args, log: dict) -> list[Iteration]:
    """The iterations still to run, with the checkpoint each starts from (as it will be for later ones)."""
    done = {entry["iteration"]: entry for entry in log["iterations"]}
    checkpoint = str(args.checkpoint)
    iterations = []
    for number in range(1, args.iterations + 1):
        if number in done:
            checkpoint = done[number]["checkpoint_out"]
            continue
        folder = iteration_folder(args.output_dir, number)
        iteration = Iteration(number, folder, iteration_seed(args.seed, number), checkpoint,
                              overwrite=folder.exists(), method=args.method)
        iterations.append(iteration)
        checkpoint = str(iteration.paths["final"])
    return iterations


def run_iteration(args, it: Iteration, log: dict, log_path: Path) -> str:
    """Run one iteration's steps, logging each; returns the new checkpoint."""
    entry = {"iteration": it.number, "folder": str(it.folder), "seed": it.seed, "checkpoint_in": it.checkpoint,
             "steps": [], "checkpoint_out": None, "complete": False}
    log["iterations"].append(entry)
    started = time.perf_counter()
    for step in iteration_steps(args, it):
        print(f"[dagger] iteration {it.number}/{args.iterations}: {step.name}", file=sys.stderr, flush=True)
        try:
            record = run_step(step, args, it)
        except BaseException as error:
            entry["steps"].append({"name": step.name, "command": step.command(), "status": "failed",
                                   "error": " ".join(str(error).split()) or type(error).__name__})
            write_log(log_path, log)
            raise
        entry["steps"].append(record)
        write_log(log_path, log)
    entry.update(checkpoint_out=entry["steps"][-1]["checkpoint"], complete=True,
                 seconds=round(time.perf_counter() - started, 3), summary=iteration_summary(it))
    write_log(log_path, log)
    return entry["checkpoint_out"]


def iteration_summary(it: Iteration) -> dict:
    """What a user checks after a round: the learner's rollouts and the data it was tuned on.

    `round_examples`: the round's examples (train and val): the expert's
    labels (DAgger) or the moves of the solved runs (expert iteration).
    """
    import conversion_common as cc

    dagger = it.method == "dagger"
    metadata = file_io.load(it.paths["relabelled" if dagger else "traces"], kind="traces").metadata
    sidecar = json.loads(cc.sidecar_path(it.paths["round_train"]).read_text())
    summary = {"traces": metadata.get("n_traces"), "learner_solved_fraction": metadata.get("solved_fraction"),
               "round_examples": sidecar["counts"]["all_parts"]["examples"]}
    if dagger:
        relabel = metadata.get("dagger_relabel", {})
        summary.update(traces=relabel.get("n_traces"), expert_labels=relabel.get("n_labels"))
    return summary


def run_loop(args, argv: list[str]) -> dict:
    """All iterations; returns the log."""
    output_dir = Path(args.output_dir)
    log_path = output_dir / LOG_NAME
    if log_path.exists() and not args.resume:
        raise UsageError(f"{log_path}: exists (use --resume to continue that loop, or another --output_dir)")
    leftover = [folder for folder in (iteration_folder(output_dir, n) for n in range(1, args.iterations + 1))
                if folder.exists()]
    if leftover and not log_path.exists():
        raise UsageError(f"{leftover[0]}: exists but {log_path} does not (not this loop's folder?); "
                         f"use another --output_dir")
    log = resumed_log(args, log_path) if log_path.exists() else new_log(args, argv)
    checkpoint = log["iterations"][-1]["checkpoint_out"] if log["iterations"] else str(args.checkpoint)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{output_dir}: cannot create the folder ({error.strerror or error}) (--output_dir)") from None
    write_log(log_path, log)
    for it in plan(args, log):
        it.checkpoint = checkpoint  # the one training made: a redone iteration's run folder may have a suffix
        checkpoint = run_iteration(args, it, log, log_path)
        summary = log["iterations"][-1]["summary"]
        solved = summary["learner_solved_fraction"]
        kind = "DAgger examples" if args.method == "dagger" else "examples from solved rollouts"
        print(f"[dagger] iteration {it.number}: learner solved {'?' if solved is None else f'{solved:.1%}'} of "
              f"{summary['traces']} rollouts, {summary['round_examples']} {kind} -> {checkpoint}")
    log.update(complete=True, final_checkpoint=checkpoint)
    write_log(log_path, log)
    return log


def dry_run(args) -> None:
    """Print the commands of every iteration still to run; write nothing."""
    log_path = Path(args.output_dir) / LOG_NAME
    log = resumed_log(args, log_path) if args.resume and log_path.exists() else {"iterations": []}
    for it in plan(args, log):
        print(f"# iteration {it.number} (seed {it.seed}) in {it.folder}")
        for step in iteration_steps(args, it):
            print(step.command())


# --------------------------------------------------------------------------
# CLI


def imitation_ratio(text: str) -> float | None:
    """--imitation_ratio: a number >= 0, or 'all' (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'all', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'all', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run DAgger (NeuralSR rollouts, expert relabelling, conversion, mixing, fine-tuning) or "
                    "expert iteration (the same without the expert: tuned on the rollouts that solved their "
                    "problem), N times (see the module docstring for the mixing rule and the folder layout).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--checkpoint", required=True, help="the model to start from (a train.py checkpoint folder)")
    add("--expressions_file", required=True, help="expressions file the learner rolls out on")
    add("--imitation_data", required=True,
        help="the original imitation data: the one-step train JSONL the checkpoint was trained on")
    add("--output_dir", required=True, help="folder of the loop: iter01/, iter02/, ... and dagger_log.json")
    add("--iterations", type=int, default=3, help="loop iterations")
    add("--method", choices=METHODS, default="dagger",
        help="dagger: the expert labels the learner's states; expert_iteration: the learner is tuned on its own "
             "rollouts that solved their problem (no expert)")
    add("--ei_targets", choices=EI_TARGETS, default=None,
        help="expert_iteration only: the moves that led to the solution (ancestors: the final best's ancestry) "
             "or every child of a solved run (all) (default: ancestors)")
    add("--config", default=DEFAULT_CONFIG, help="train.py run config of the fine-tuning")
    add("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of --config (repeatable), e.g. -o max_steps=500; "
             f"the loop sets {', '.join(LOOP_KEYS[:-1])} itself")
    add("--mix", choices=MIXES, default="aggregate",
        help="round rows to tune on: every round so far (aggregate) or this round's only (latest)")
    add("--imitation_ratio", type=imitation_ratio, default=1.0,
        help="imitation rows mixed in per round row (a seeded sample); 'all' keeps every one, 0 none")
    add("--population_size", type=int, default=20, help="NeuralSR individuals per generation in the rollouts")
    add("--num_generations", type=int, default=50, help="NeuralSR generations per rollout")
    add("--max_expressions", type=int, default=None,
        help="roll out on a seeded subset of this many expressions, another subset every iteration (default: all)")
    add("--batch_size", type=int, default=256, help="expressions NeuralSR rolls out at once (one model call each)")
    add("--trace_args", default="",
        help="more generate_traces.py options, as one shell-quoted string, e.g. \"--temperature 0.8 --max_size 25\"")
    add("--context_type", choices=CONTEXT_TYPES, default="basic",
        help="one-step context of the rounds' data; must be the checkpoint's")
    add("--sample_fraction", type=float, default=1.0,
        help="share of a round's targets (the expert's labels, or the solved runs' moves) turned into examples")
    add("--val_fraction", type=float, default=0.1, help="share of each round's expressions kept for validation")
    add("--seed", type=int, default=0, help="master seed; iteration i runs with derive_seed(seed, i) mod 2^31")
    add("--workers", type=int, default=1, help="worker processes of the relabelling and the conversion")
    add("--resume", action="store_true", help="continue the loop recorded in --output_dir/dagger_log.json")
    add("--dry_run", action="store_true", help="print the commands of every iteration and run nothing")
    add("--quiet", action="store_true", help="no progress bars in the stages")
    return parser


def check_args(args) -> None:
    """UsageError on bad values and on options the loop must set itself."""
    if args.iterations < 1:
        raise UsageError(f"--iterations must be at least 1, got {args.iterations}")
    if args.method == "dagger" and args.ei_targets is not None:
        raise UsageError(f"--ei_targets {args.ei_targets}: applies to --method expert_iteration only")
    if args.method == "expert_iteration" and args.ei_targets is None:
        args.ei_targets = "ancestors"
    for name in ("batch_size", "population_size", "workers"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0.0 < args.val_fraction < 1.0:
        raise UsageError(f"--val_fraction must be in (0, 1), got {args.val_fraction}")
    for override in args.override:
        key = override.split("=", 1)[0].strip()
        if key in LOOP_KEYS:
            raise UsageError(f"-o {override}: the loop sets {key} itself")
    try:
        trace_args = shlex.split(args.trace_args)
    except ValueError as error:
        raise UsageError(f"--trace_args {args.trace_args!r}: {error}") from None
    for flag in trace_args:
        if flag.split("=", 1)[0] in LOOP_TRACE_FLAGS:
            raise UsageError(f"--trace_args: the loop sets {flag.split('=', 1)[0]} itself")
    if not Path(args.config).exists() and (REPO / args.config).exists():
        args.config = str(REPO / args.config)


def checkpoint_prompt(args) -> dict:
    """The starting checkpoint's prompt settings (neural_sr.checkpoint_settings); every round's DAgger data is
    written the same way (its parentheses), and the fine-tuned checkpoints keep them."""
    from neural_sr import CheckpointError, checkpoint_settings

    try:
        return checkpoint_settings(args.checkpoint)
    except CheckpointError as error:
        raise UsageError(f"{error} (--checkpoint)") from None


def check_prompt_settings(args) -> None:
    """UsageError when the imitation data (by its conversion sidecar) or --context_type writes prompts other
    than the checkpoint was trained on: fine-tuning on a mix of two prompt styles would be silent damage."""
    model = checkpoint_prompt(args)
    try:
        data = train.training_prompt_settings(args.imitation_data) or {}
    except (OSError, ValueError, AttributeError) as error:
        raise UsageError(f"{args.imitation_data}: its conversion sidecar is unreadable ({error}) "
                         f"(--imitation_data)") from None
    for key, value, source in (("context_type", args.context_type, "--context_type"),
                               ("context_type", data.get("context_type"), f"{args.imitation_data} (its sidecar)"),
                               ("parentheses", data.get("parentheses"), f"{args.imitation_data} (its sidecar)")):
        if value is not None and model[key] is not None and value != model[key]:
            raise UsageError(f"{source}: {key} {value!r}, but checkpoint {args.checkpoint} was trained on "
                             f"{key} {model[key]!r}")


def check_inputs(args) -> None:
    """Every input checked before iteration 1 (a dry run too); UsageError naming the option and the file.

    The checkpoint is a folder holding a readable config.json and a
    tokenizer; the expressions file loads as kind 'expressions'; the
    imitation data is a JSONL file whose first row reads, and it and
    --context_type write the checkpoint's prompts; the fine-tuning
    config resolves with the -o overrides and the loop's own (train.py's
    own validation, no model built); --output_dir is, or can become, a folder.
    """
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_dir():
        raise UsageError(f"{checkpoint}: {'not found' if not checkpoint.exists() else 'not a folder'} (--checkpoint)")
    try:
        model_config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        reason = "no config.json" if isinstance(error, FileNotFoundError) else f"config.json: {error}"
        raise UsageError(f"{checkpoint}: not a train.py checkpoint ({' '.join(reason.split())}) "
                         f"(--checkpoint)") from None
    if not isinstance(model_config, dict) or not (checkpoint / "tokenizer.json").is_file():
        raise UsageError(f"{checkpoint}: not a train.py checkpoint (config.json not an object, or no "
                         f"tokenizer.json) (--checkpoint)")
    try:
        file_io.load(args.expressions_file, kind="expressions")
    except file_io.DataFileError as error:
        raise UsageError(f"{error} (--expressions_file)") from None
    try:
        first_row = next(iter(file_io.read_jsonl(args.imitation_data)), None)
    except file_io.DataFileError as error:
        raise UsageError(f"{error} (--imitation_data)") from None
    if first_row is None:
        raise UsageError(f"{args.imitation_data}: file has no rows (--imitation_data)")
    check_prompt_settings(args)
    check_output_dir(Path(args.output_dir))
    first = Iteration(1, iteration_folder(args.output_dir, 1), iteration_seed(args.seed, 1), str(checkpoint),
                      method=args.method)
    try:
        train.load_config(args.config, fine_tune_overrides(args, first))
    except train.ConfigError as error:
        raise UsageError(f"fine-tuning config: {error}") from None


def check_output_dir(output_dir: Path) -> None:
    """UsageError when --output_dir is a file or lies under one (its nearest existing ancestor must be a folder)."""
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == output_dir else f"lies under a file, {existing}"
        raise UsageError(f"{output_dir}: {where} (--output_dir must be a folder)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        check_inputs(args)
        if args.dry_run:
            dry_run(args)
            return 0
        log = run_loop(args, argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.status
    print(f"[dagger] {len(log['iterations'])} iterations complete; final checkpoint {log['final_checkpoint']} "
          f"(log: {Path(args.output_dir) / LOG_NAME})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
