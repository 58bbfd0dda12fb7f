"""Training throughput: train.py (HF Trainer) against a plain PyTorch loop, same model and batches.

Protocol:

- Data: `training_data.synthetic_rows` one-step examples at population 20
  (random BasicSR-sized trees and fitnesses: 400-830 tokens, mean ~590),
  written as JSONL with the ttsr tokenizer (64 tokens) beside it, as a
  conversion would. Made in a temporary folder at the start.
- train.py: `train.train()` on training/onestep-tiny.json (GPT-Neo tiny,
  batch 64, length-grouped batches, bf16, SDPA, fused AdamW, grad clipping,
  logging every 50 steps) with max_steps = warmup + steps, no evaluation, no
  checkpoint until the end. A callback synchronises the GPU and reads the
  clock at the end of step `warmup` and of the last step.
- Plain loop: a fresh model from the same `train.build_model`, the same
  batches (the same LengthGroupedSampler order and Collator, a DataLoader
  with the same workers and pinned memory), AdamW (fused on a GPU), bf16
  autocast, gradient clipping, `zero_grad(set_to_none=True)`; timed over the
  same steps after the same warmup. `--compile` compiles the model in both.
- Reported: tokens/s of each (tokens = batch x padded length, i.e. what the
  GPU processes; non-padding tokens/s too), the ratio train.py / plain
  (target >= 0.7), the fraction of processed tokens that are not padding
  (target >= 0.9), and absolute tokens/s (target >= 1,000,000 on an H100).
  Before timing, the SDPA attention is checked against GPT-Neo's eager one on
  a batch (max |logit difference|, fp32).

    python bench/bench_train.py                 # on a GPU machine, ~1-2 minutes
    python bench/bench_train.py --smoke         # CPU, tiny settings, seconds (a test runs it)
    python bench/bench_train.py --json bench_train.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import tokenizer as tk  # noqa: E402
import train  # noqa: E402
import training_data as td  # noqa: E402

SMOKE_MODEL = {"model_type": "gpt_neo", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
               "attention_types": [[["global"], 2]], "intermediate_size": 64,
               "activation_function": "gelu_pytorch_tanh"}


def make_dataset(folder: Path, n_examples: int, population_size: int, seed: int = 0) -> Path:
    """Synthetic one-step JSONL + tokenizer/ in `folder`; returns the train file."""
    rows = td.synthetic_rows(n_examples, seed=seed, population_size=population_size)
    path = td.write_rows(folder / "bench.train.jsonl", rows)
    tk.save_tokenizer(tk.build_tokenizer(), folder / "tokenizer")
    return path


def bench_config(args, folder: Path, train_file: Path) -> train.RunConfig:
    """training/onestep-tiny.json with the benchmark's data, steps and no evaluation."""
    overrides = [f"train_file={train_file}", f"output_dir={folder / 'runs'}", "run_name=bench",
                 f"max_steps={args.warmup + args.steps}", "eval_steps=0", f"save_steps={10**9}",
                 "report_to=none", "disable_tqdm=true", "use_datasets=false", f"torch_compile={args.compile}",
                 f"per_device_train_batch_size={args.batch_size}", "warmup_steps=10"]
    if args.smoke:
        model = folder / "smoke-model.json"
        model.write_text(json.dumps(SMOKE_MODEL))
        overrides += [f"model_config={model}", "device=cpu", "dataloader_num_workers=0", "logging_steps=2"]
    return train.load_config(REPO / "training/onestep-tiny.json", overrides)


def step_tokens(config, dataset, tokenizer, n_steps: int) -> list[tuple[int, int]]:
    """(real, processed) tokens of each of the first `n_steps` batches, in training order."""
    sampler = td.LengthGroupedSampler(dataset.lengths, config.per_device_train_batch_size, seed=config.seed)
    sampler.set_epoch(0)
    order = list(sampler)
    collate = train.make_collator(config, tokenizer)
    counts = []
    for step in range(n_steps):
        batch = [dataset[i] for i in order[step * config.per_device_train_batch_size:
                                              (step + 1) * config.per_device_train_batch_size]]
        out = collate(batch)
        counts.append((out["n_real_tokens"], out["n_batch_tokens"]))
    return counts


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepTimer:
    """A TrainerCallback reading the clock (GPU synchronised) at the end of two steps.

    With `profile_steps`, torch.profiler records that many steps after `first`
    and the busiest operations are printed (CPU side: where a step's time goes).
    """

    def __init__(self, first: int, last: int, device, profile_steps: int = 0):
        from transformers import TrainerCallback

        timer = self
        self.times = {}
        self.profiler = None

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step in (first, last):
                    synchronize(device)
                    timer.times[state.global_step] = time.perf_counter()
                if profile_steps and state.global_step == first:
                    activities = [torch.profiler.ProfilerActivity.CPU]
                    if device.type == "cuda":
                        activities.append(torch.profiler.ProfilerActivity.CUDA)
                    timer.profiler = torch.profiler.profile(activities=activities)
                    timer.profiler.__enter__()
                if profile_steps and state.global_step == first + profile_steps and timer.profiler:
                    synchronize(device)
                    timer.profiler.__exit__(None, None, None)
                    print(timer.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
                    timer.profiler = None

        self.callback = Callback()


def time_trainer(config, args, device) -> tuple[float, object]:
    """Seconds of train.py's steps warmup+1 .. warmup+steps, and the result of train.train."""
    timer = StepTimer(args.warmup, args.warmup + args.steps, device, args.profile)
    result = train.train(config, callbacks=[timer.callback])
    return timer.times[args.warmup + args.steps] - timer.times[args.warmup], result


def time_plain_loop(config, args, dataset, tokenizer, device) -> float:
    """Seconds of the same steps in a plain PyTorch loop over the same batches and model."""
    model = train.build_model(config, tokenizer).to(device)
    model.train()
    if args.compile:
        model = torch.compile(model)
    bf16 = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  betas=(0.9, config.adam_beta2), fused=device.type == "cuda")
    sampler = td.LengthGroupedSampler(dataset.lengths, config.per_device_train_batch_size, seed=config.seed)
    sampler.set_epoch(0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.per_device_train_batch_size, sampler=sampler,
        collate_fn=train.make_collator(config, tokenizer, model), num_workers=config.dataloader_num_workers,
        pin_memory=device.type == "cuda", drop_last=True)
    started = None
    for step, batch in enumerate(loader, start=1):
        td.pop_batch_stats(batch)
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == args.warmup:
            synchronize(device)
            started = time.perf_counter()
        if step == args.warmup + args.steps:
            synchronize(device)
            return time.perf_counter() - started
    raise RuntimeError(f"the data ran out before step {args.warmup + args.steps}; use more --examples")


def sdpa_difference(config, dataset, tokenizer, device) -> float:
    """max |logits(SDPA) - logits(eager)| on one right-padded batch with its mask, fp32."""
    model = train.build_model(config, tokenizer).to(device).eval()
    eager = copy.deepcopy(model)
    for module in eager.modules():
        if type(module).__name__ == "SdpaGPTNeoSelfAttention":
            module.__class__ = type(module).__mro__[1]
    eager.config._attn_implementation = "eager"
    collate = td.Collator(tokenizer.pad_token_id, attention_mask=True)
    batch = collate([dataset[i] for i in range(min(8, len(dataset)))])
    real = batch["attention_mask"].bool().to(device)
    with torch.no_grad():
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        fast = model(input_ids=ids, attention_mask=mask).logits[real]
        unmasked = model(input_ids=ids).logits[real]
        reference = eager(input_ids=ids, attention_mask=mask).logits[real]
    return float(max((fast - reference).abs().max(), (unmasked - reference).abs().max()))


def run(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory(prefix="bench_train-") as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        train_file = make_dataset(folder, args.examples, args.population_size)
        config = bench_config(args, folder, train_file)
        tokenizer = tk.load_tokenizer(folder / "tokenizer")
        dataset = td.load_examples(train_file, tokenizer, "onestep", config.max_length, use_datasets=False)
        data_seconds = time.perf_counter() - started
        counts = step_tokens(config, dataset, tokenizer, args.warmup + args.steps)
        window = counts[args.warmup:]
        real, processed = sum(c[0] for c in window), sum(c[1] for c in window)
        difference = sdpa_difference(config, dataset, tokenizer, device)
        trainer_seconds, result = time_trainer(config, args, device)
        seen = result["trainer"].tokens_seen
        plain_seconds = time_plain_loop(config, args, dataset, tokenizer, device)
    report = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "compile": args.compile, "batch_size": config.per_device_train_batch_size,
        "model_config": Path(config.model_config).name, "steps_timed": args.steps, "warmup_steps": args.warmup,
        "examples": len(dataset), "example_tokens": td.describe_lengths(dataset.lengths),
        "data_seconds": round(data_seconds, 1),
        "sdpa_max_logit_difference": difference,
        "tokens_per_step_mean": processed / len(window),
        "nonpad_fraction": real / processed,
        "trainer_tokens_checked": seen[1] == sum(c[1] for c in counts),
        "trainer_seconds": trainer_seconds, "plain_seconds": plain_seconds,
        "trainer_tokens_per_s": processed / trainer_seconds, "plain_tokens_per_s": processed / plain_seconds,
        "trainer_nonpad_tokens_per_s": real / trainer_seconds, "plain_nonpad_tokens_per_s": real / plain_seconds,
    }
    report["ratio"] = report["trainer_tokens_per_s"] / report["plain_tokens_per_s"]
    return report


def print_report(report: dict) -> None:
    print(f"device {report['device']}, torch {report['torch']}, model {report['model_config']}, "
          f"batch {report['batch_size']}, compile {report['compile']}; data: {report['example_tokens']}")
    print(f"SDPA vs eager attention: max |logit difference| {report['sdpa_max_logit_difference']:.2e}")
    print(f"{'':12}{'tokens/s':>14}{'non-pad tokens/s':>18}{'seconds':>10}")
    for name in ("trainer", "plain"):
        print(f"{name:12}{report[name + '_tokens_per_s']:>14,.0f}{report[name + '_nonpad_tokens_per_s']:>18,.0f}"
              f"{report[name + '_seconds']:>10.2f}")
    print(f"train.py / plain loop: {report['ratio']:.2f} (target >= 0.7); not padding: "
          f"{100 * report['nonpad_fraction']:.1f}% (target >= 90%); train.py {report['trainer_tokens_per_s']:,.0f} "
          f"tokens/s (target >= 1,000,000 on an H100); {report['steps_timed']} steps of "
          f"{report['tokens_per_step_mean']:,.0f} tokens after {report['warmup_steps']} warmup")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model and data: checks that it runs")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 100; smoke 4)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 20; smoke 2)")
    parser.add_argument("--batch_size", type=int, default=None, help="examples per step (default 64; smoke 4)")
    parser.add_argument("--examples", type=int, default=None,
                        help="synthetic examples (default: enough for warmup + steps)")
    parser.add_argument("--population_size", type=int, default=None, help="population per prompt (default 20; smoke 4)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in both paths")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile N train.py steps after the warmup and print the busiest operations "
                             "(the timing is then not representative)")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    defaults = dict(steps=4, warmup=2, batch_size=4, population_size=4) if args.smoke else \
        dict(steps=100, warmup=20, batch_size=64, population_size=20)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.examples is None:
        args.examples = (args.warmup + args.steps) * args.batch_size + args.batch_size
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
