"""The `memmodel` command: help, configs and overrides, a tiny train and eval."""

import json
import subprocess
import sys

import pytest
import torch

import memmodel
from memmodel.checkpoint import read_checkpoint
from memmodel.training import cli

TINY = {
    "model": {"d_model": 16, "n_layers": 1, "d_state": 4, "backend": "torch", "wm_slots": 0,
              "ltm_controller": "fifo", "ltm_heads": 1, "ltm_chunk_size": 8,
              "ltm_capacity": [2]},
    "task": {"name": "passkey", "seq_len": 47, "chunk_size": 8},
    "train": {"steps": 2, "batch_size": 2, "eval_batches": 1, "log_every": 1},
}


@pytest.mark.parametrize("command", ["train", "eval", "ablate", "demo", "bench"])
def test_help_of_each_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    assert {"train": "--set KEY=VALUE", "eval": "checkpoint", "ablate": "AblationSpec",
            "demo": "--long", "bench": "NAME"}[command] in out


def test_python_dash_m_memmodel():
    proc = subprocess.run([sys.executable, "-m", "memmodel", "--help"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert all(c in proc.stdout for c in cli.COMMANDS)


def test_overrides():
    data = {"model": {"d_model": 8}}
    cli.apply_override(data, "model.wm_slots=4")
    cli.apply_override(data, "model.ltm_capacity=[4,2]")
    cli.apply_override(data, "model.ltm_controller=fifo")
    cli.apply_override(data, "train.seconds=null")
    assert data == {"model": {"d_model": 8, "wm_slots": 4, "ltm_capacity": [4, 2],
                              "ltm_controller": "fifo"}, "train": {"seconds": None}}
    assert cli.split_dotted_flags(["--model.d_model", "32", "--train.lr=0.1"]) == [
        "model.d_model=32", "train.lr=0.1"]
    with pytest.raises(cli.ConfigError, match="expected KEY=VALUE"):
        cli.apply_override(data, "model.wm_slots")
    with pytest.raises(cli.ConfigError, match="model.d_model is 8, not a section"):
        cli.apply_override(data, "model.d_model.x=1")


def test_resolve_refuses_unknown_and_bad_fields():
    with pytest.raises(cli.ConfigError, match=r"model: unknown keys \['wm_slot'\]"):
        cli.resolve_train_config({"model": {"wm_slot": 4}})
    with pytest.raises(cli.ConfigError, match=r"qlearning: QLearningConfig.memory_cost"):
        cli.resolve_train_config({"qlearning": {"memory_cost": -1}})
    with pytest.raises(cli.ConfigError, match=r"loop: expected one of"):
        cli.resolve_train_config({"loop": "rl"})
    with pytest.raises(cli.ConfigError, match=r"train config: unknown keys \['modle'\]"):
        cli.resolve_train_config({"modle": {}})
    cfg = cli.resolve_train_config({})
    assert cli.resolve_train_config(cfg) == cfg  # the resolved config reads back to itself


def test_yaml_config(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "run.yml"
    path.write_text(yaml.safe_dump(TINY))
    assert cli.load_config(path) == TINY
    cfg = cli.resolve_train_config(apply(cli.load_config(path), "model.wm_slots=4"))
    assert cfg["model"]["wm_slots"] == 4 and cfg["model"]["ltm_controller"] == "fifo"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(cli.ConfigError, match="not valid YAML"):
        cli.load_config(bad)


def apply(data, assignment):
    return cli.apply_override(data, assignment)


def test_yaml_needs_pyyaml(tmp_path, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  wm_slots: 4\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(cli.ConfigError, match=r"needs PyYAML \(pip install 'memmodel\[yaml\]'\)"):
        cli.load_config(path)


def test_config_file_and_overrides_train_and_evaluate(tmp_path, capsys):
    """A config file plus overrides: every section reaches the model (a working memory of
    4 slots, a Q-learning controller with its costs), the resolved config is written, the
    checkpoint loads with memmodel.load and `memmodel eval` streams it."""
    path = tmp_path / "run.json"
    path.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(path), "--set", "model.wm_slots=4",
                     "--set", "model.wm_heads=2", "--model.ltm_controller", "qlearning",
                     "--set", "qlearning.memory_cost=0.25", "--out", str(out),
                     "--no-progress"]) == 0
    written = json.loads((out / "config.json").read_text())
    assert written["model"]["wm_slots"] == 4 and written["model"]["d_model"] == 16
    assert written["model"]["ltm_controller"] == "qlearning"
    assert written["qlearning"]["memory_cost"] == 0.25
    assert written["qlearning"]["lr"] == 1e-3  # a default, filled in
    assert written["train"]["checkpoint"] == str(out / "model.pt")
    assert written["task"]["seq_len"] == 47 and "marker" in written["task"]
    results = json.loads((out / "train.json").read_text())
    assert results["steps"] == 2 and len(results["losses"]) == 2
    assert all(torch.isfinite(torch.tensor(results["losses"])))
    model, task = memmodel.load(out / "model.pt")
    wm = model.layers[0].working_memory
    assert wm is not None and wm.slot_keys.shape[1] == 4
    ctrl = model.layers[0].long_term_memory.controller
    assert ctrl.name == "qlearning" and ctrl.rl.memory_cost == 0.25
    assert task["name"] == "passkey"
    try:
        import matplotlib  # noqa: F401
        assert (out / "train_loss.png").stat().st_size > 0
    except ImportError:
        pass
    # the written config runs again; its checkpoint goes with the new --out
    again = tmp_path / "again"
    assert cli.main(["train", "--config", str(out / "config.json"), "--set", "train.steps=3",
                     "--resume", str(out / "model.pt"), "--out", str(again),
                     "--no-progress"]) == 0
    assert json.loads((again / "train.json").read_text())["steps"] == 3
    assert read_checkpoint(again / "model.pt")["step"] == 3
    assert read_checkpoint(out / "model.pt")["step"] == 2
    capsys.readouterr()
    assert cli.main(["eval", str(out / "model.pt"), "--set", "lengths=[48,96]", "--n", "2",
                     "--set", "batch_size=2", "--out", str(tmp_path / "eval"),
                     "--no-progress"]) == 0
    rows = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert [(r["task"], r["T"], r["n"]) for r in rows] == [("passkey", 48, 2), ("passkey", 96, 2)]
    assert "| passkey | 96 | 2 |" in capsys.readouterr().out


def test_errors_exit_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--set", "model.wm_slots=-1", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "MemoryConfig.wm_slots: expected an int >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "stray"])
    assert "unrecognised argument 'stray'" in capsys.readouterr().err


def test_ablate_print_config_with_overrides(capsys):
    assert cli.main(["ablate", "--set", "train.steps=7", "--set", 'variants=["ssm","wm"]',
                     "--print-config"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["train"]["steps"] == 7 and spec["variants"] == ["ssm", "wm"]


def test_bench_lists_and_refuses_unknown(tmp_path, capsys):
    assert cli.main(["bench", "--list"]) == 0
    assert "bench_evaluation_cpu" in capsys.readouterr().out.split()
    with pytest.raises(SystemExit):
        cli.main(["bench", "no_such_bench", "--out", str(tmp_path)])
    assert "expected a benchmark from" in capsys.readouterr().err


def test_plot_scaling(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"ltm": c, "seq_len": T, "tokens_per_s": 1000.0 / (1 + T / 4096)}
            for c in ("none", "fifo") for T in (1024, 4096, 16384)]
    assert cli.plot_scaling(rows, tmp_path / "s.png", "eval")
    assert (tmp_path / "s.png").stat().st_size > 0
    assert not cli.plot_scaling([{"seq_len": 1024, "tokens_per_s": 1.0}], tmp_path / "t.png")


SPEC = dict(
    variants=["ssm", "fifo"],
    model=dict(d_model=16, n_layers=1, d_state=4, backend="torch"),
    ltm=dict(ltm_heads=1, ltm_chunk_size=8, ltm_summaries=1, ltm_levels=1, ltm_capacity=2,
             ltm_merge=2),
    train_tasks=[dict(name="passkey", seq_len=63, chunk_size=8, key_len=1)],
    train=dict(steps=2, batch_size=2, eval_batches=1, log_every=1),
    eval_tasks=[dict(name="passkey", chunk_size=8, key_len=1)],
    eval_lengths=[128, 256], eval_n=2, eval_batch_size=2, segment=64, warmup_steps=0,
)


def test_ablate_runs_a_spec_file_with_overrides(tmp_path, capsys):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(SPEC))
    out = tmp_path / "ablation"
    assert cli.main(["ablate", "--config", str(path), "--set", 'variants=["fifo"]',
                     "--set", "eval_lengths=[128]", "--out", str(out), "--no-progress"]) == 0
    spec = json.loads((out / "spec.json").read_text())
    assert spec["variants"] == ["fifo"] and spec["eval_lengths"] == [128]
    rows = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["T"]) for r in rows] == [("fifo", 128)]
    assert "memmodel ablate --config" in (out / "results.md").read_text()
    assert "| fifo |" in capsys.readouterr().out
