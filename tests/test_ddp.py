"""Two-process data-parallel training on the CPU (gloo), launched as on a GPU node.

`torch.distributed.run` (torchrun; what `accelerate launch --multi_gpu
--num_processes 2` runs underneath) starts two train.py processes. After
training, each rank wrote the hash of its parameters (debug_dump_param_hash):
DDP keeps the replicas identical, so the hashes must agree, and the loss must
have gone down. (`accelerate launch --cpu --num_processes 2` would silently
run a single process.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import tokenizer as tk
import training_data as td

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"model_type": "gpt_neo", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
              "attention_types": [[["global"], 2]], "intermediate_size": 64,
              "activation_function": "gelu_pytorch_tanh"}


def test_two_process_ddp_keeps_replicas_identical_and_learns(tmp_path):
    rows = td.synthetic_rows(96, seed=1, population_size=4, max_vars=2, max_depth=3)
    td.write_rows(tmp_path / "data" / "ddp.train.jsonl", rows)
    tk.save_tokenizer(tk.build_tokenizer(), tmp_path / "data" / "tokenizer")
    (tmp_path / "model.json").write_text(json.dumps(TINY_MODEL))
    config = {"mode": "onestep", "train_file": str(tmp_path / "data" / "ddp.train.jsonl"),
              "model_config": str(tmp_path / "model.json"), "output_dir": str(tmp_path / "out"),
              "run_name": "ddp", "per_device_train_batch_size": 4, "learning_rate": 3e-3, "warmup_steps": 0,
              "lr_scheduler_type": "constant", "max_steps": 20, "logging_steps": 2, "save_steps": 20,
              "eval_steps": 0, "dataloader_num_workers": 0, "disable_tqdm": True, "use_datasets": False,
              "debug_dump_param_hash": True}
    (tmp_path / "ddp.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "train.py"), "--config", str(tmp_path / "ddp.json")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    run_dir = tmp_path / "out" / "ddp"
    hashes = [(run_dir / f"param_hash.rank{rank}.txt").read_text().strip() for rank in (0, 1)]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 64
    state = json.loads((run_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 20 and losses[-1] < 0.8 * losses[0], losses
    meta = json.loads((run_dir / "checkpoint-20" / "ttsr_train_meta.json").read_text())
    assert meta["world_size"] == 2
    assert result.stdout.count("run folder") == 1  # printed by rank 0 only
