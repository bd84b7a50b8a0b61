"""The ablation runner end to end at a tiny size, and its spec's checks."""

import json
import os

import pytest
import torch

from memmodel.training import ablation
from memmodel.training.ablation import ROW_FIELDS, AblationSpec, main, run_ablation
from memmodel.training.memory import load_checkpoint

TINY = dict(
    variants=["ssm", "fifo"],
    model=dict(d_model=16, n_layers=1, d_state=4, backend="torch"),
    ltm=dict(ltm_heads=1, ltm_chunk_size=8, ltm_summaries=1, ltm_levels=1, ltm_capacity=2,
             ltm_merge=2),
    train_tasks=[dict(name="passkey", seq_len=63, chunk_size=8, key_len=1),
                 dict(name="multi_needle", seq_len=64, n_facts=2, n_decoys=1, n_queries=1)],
    train=dict(steps=2, batch_size=2, eval_batches=1, log_every=1),
    eval_tasks=[dict(name="passkey", chunk_size=8, key_len=1)],
    eval_lengths=[128, 256],
    eval_n=2,
    eval_batch_size=2,
    segment=64,
    warmup_steps=1,
)


def test_runner_end_to_end(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(TINY))
    out = tmp_path / "results"
    main(["--spec", str(spec_path), "--out", str(out), "--no-progress"])
    rows = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["T"]) for r in rows] == [("ssm", 128), ("ssm", 256),
                                                      ("fifo", 128), ("fifo", 256)]
    for r in rows:
        assert set(ROW_FIELDS) <= set(r)
        assert r["task"] == "passkey" and r["n"] == 2 and r["train_steps"] == 2
        assert r["warmup_steps"] == 1 and r["warmup_shared"] == (r["variant"] == "fifo")
        assert 0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1
        assert r["state_bytes"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0
    assert [r["entries"] for r in rows] == [0, 0, 2, 2]  # the bank of 2 is full
    depth = json.loads((out / "depth.json").read_text())
    assert len(depth) == 4 * 5 and sum(d["n"] for d in depth) == 4 * 2
    table = (out / "results.md").read_text()
    assert "| fifo | 256 | 2 |" in table and "Command:" in table
    assert "store_all warm-up of 1 steps" in table and "ssm and wm train 1 + 2" in table
    resolved = json.loads((out / "spec.json").read_text())
    assert resolved["warmup_steps"] == 1
    assert AblationSpec.from_dict(resolved).resolved() == resolved
    assert load_checkpoint(out / "models" / "warmup.pt")[2]["step"] == 1
    for variant in ("ssm", "fifo"):
        model, controller, payload = load_checkpoint(out / "models" / f"{variant}.pt")
        assert payload["step"] == 2
        assert (controller is None) == (variant == "ssm")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "results.png").stat().st_size > 0


def test_defaults_resolve_and_bind_the_capacity(capsys):
    main(["--print-spec", "--variants", "ssm,full", "--steps", "7"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["variants"] == ["ssm", "full"] and printed["train"]["steps"] == 7
    assert AblationSpec.from_dict(printed).resolved() == printed
    spec = AblationSpec()
    assert spec.variants == ["ssm", "wm", "fifo", "importance", "store_all", "qlearning",
                             "gumbel", "full"]
    assert spec.config("gumbel").ltm_controller == "gumbel" and not spec.learns_controller(
        "gumbel")
    full, wm, ssm = spec.config("full"), spec.config("wm"), spec.config("ssm")
    assert full.wm_slots and full.ltm_controller == "qlearning"
    assert wm.wm_slots and wm.ltm_controller == "none"
    assert not ssm.wm_slots and ssm.ltm_controller == "none"
    assert spec.qlearning_config().seed == spec.seed  # the features know no length
    assert spec.warmup_steps > 0 and printed["warmup_steps"] == spec.warmup_steps
    assert spec.warmup_config().seed == 0 and spec.train_config().seed == 1
    cold = AblationSpec.from_dict({**TINY, "warmup_steps": 0})
    assert cold.train_config().seed == 0  # one phase, as without the warm-up
    with pytest.raises(ValueError, match="warmup_steps is 0"):
        cold.warmup_config()


def test_warmup_is_shared_and_the_budget_equal(tmp_path, monkeypatch):
    """One store_all warm-up; every long-term-memory variant starts from its weights; ssm
    runs the same two phases on its own model; every variant W + S steps."""
    calls = []
    real = ablation.train_memory

    def spy(model, task, tc, controller=None, **kw):
        start = {k: v.clone() for k, v in model.state_dict().items()}
        result = real(model, task, tc, controller, **kw)
        calls.append(dict(config=model.config, tc=tc, start=start,
                          end={k: v.clone() for k, v in model.state_dict().items()}))
        return result

    monkeypatch.setattr(ablation, "train_memory", spy)
    spec = AblationSpec.from_dict({**TINY, "variants": ["ssm", "fifo", "qlearning", "full"],
                                   "wm": dict(wm_slots=2, wm_heads=1), "warmup_steps": 2,
                                   "train": {**TINY["train"], "steps": 1},
                                   "eval_lengths": [128], "eval_n": 1, "eval_batch_size": 1})
    rows = run_ablation(spec, tmp_path)
    warm, ssm1, ssm2, fifo, qlearning, full = calls
    assert warm["config"].ltm_controller == "store_all" and not warm["config"].wm_slots
    assert [c["tc"].steps for c in calls] == [2, 2, 1, 1, 1, 1]
    assert [c["tc"].seed for c in calls] == [0, 0, 1, 1, 1, 1]
    assert ssm1["config"].ltm_controller == "none"
    assert all(torch.equal(ssm1["end"][k], v) for k, v in ssm2["start"].items())
    for run in (fifo, qlearning, full):
        assert all(torch.equal(run["start"][k], v) for k, v in warm["end"].items())
        assert not any(torch.equal(warm["start"][k], v) for k, v in warm["end"].items()
                       if v.is_floating_point() and v.numel() > 1 and k.endswith("weight"))
    assert {(r["variant"], r["warmup_steps"] + r["train_steps"]) for r in rows} == {
        ("ssm", 3), ("fifo", 3), ("qlearning", 3), ("full", 3)}


def test_grafted_working_memory_starts_as_a_zero_branch():
    """full from the warm store_all weights computes qlearning's logits at step 0 (the
    same Q-learning controller, greedy); its working memory's output projection is zero
    and gets gradient, its inner weights none until the projection is non-zero."""
    from memmodel.controllers import QLearningController
    from memmodel.model import MemoryLM
    from memmodel.training.memory import attach_controller

    spec = AblationSpec.from_dict({**TINY, "variants": ["qlearning", "full"],
                                   "wm": dict(wm_slots=2, wm_heads=1)})
    warm = ablation.warm_up(spec)[0].state_dict()
    batch = spec.training_tasks()[0].sample(2, torch.Generator().manual_seed(3))
    models = {}
    for variant in ("qlearning", "full"):
        config = spec.config(variant)
        torch.manual_seed(spec.seed)
        model = MemoryLM(config)
        grafted = ablation.load_warm(model, warm)
        assert grafted == (["layers.0.working_memory"] if variant == "full" else [])
        got = model.state_dict()
        assert all(torch.equal(got[k], v) for k, v in warm.items())
        attach_controller(model, QLearningController(config, spec.qlearning_config()))
        models[variant] = model.eval()
    wm = models["full"].layers[0].working_memory
    assert not wm.out_proj.weight.any() and wm.in_proj.weight.any()
    out = {v: m(batch.input_ids, labels=batch.labels) for v, m in models.items()}
    torch.testing.assert_close(out["full"].logits, out["qlearning"].logits, rtol=0, atol=1e-6)
    out["full"].loss.backward()
    assert wm.out_proj.weight.grad is not None and wm.out_proj.weight.grad.abs().sum() > 0
    assert not wm.in_proj.weight.grad.any()
    ltm = models["full"].layers[0].long_term_memory
    assert ltm.out_proj.weight.any() and ltm.out_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("change, pattern", [
    (dict(variants=["ssm", "lstm"]), "variants: expected distinct names"),
    (dict(colour="red"), r"unknown fields \['colour'\]"),
    (dict(train=dict(seed=3)), r"runner sets \['seed'\] itself"),
    (dict(ltm={**TINY["ltm"], "ltm_capacity": 9}), "must overflow at training length"),
    (dict(warmup_steps=-1), "warmup_steps: expected an int >= 0"),
], ids=["variant", "unknown", "own-field", "capacity", "warmup"])
def test_spec_refuses(change, pattern):
    with pytest.raises(ValueError, match=pattern):
        AblationSpec.from_dict({**TINY, **change})


def test_run_ablation_names_its_files_and_command(tmp_path):
    spec = AblationSpec.from_dict({**TINY, "variants": ["ssm"], "eval_lengths": [128]})
    rows = run_ablation(spec, tmp_path, name="demo", command="make demo")
    assert json.loads((tmp_path / "demo.json").read_text()) == rows
    table = (tmp_path / "demo.md").read_text()
    assert "Command: `make demo`" in table and "| ssm | 128 | 2 |" in table
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(ValueError, match=r"expected a plain file stem as name, got '../x'"):
        run_ablation(spec, tmp_path, name="../x")


def test_demo_specs_resolve_bind_the_capacity_and_reach_128k(capsys):
    from memmodel.training import demo

    short, long = demo.demo_spec(), demo.demo_spec(long=True)
    # every variant but gumbel, which the demo runs when asked (--variants)
    assert short.variants == list(ablation.VARIANTS)
    assert max(short.eval_lengths) == 131072 and max(long.eval_lengths) == 1 << 20
    assert {1024, 8192, 32768, 131072} <= set(short.eval_lengths) <= set(long.eval_lengths)
    assert max(t.seq_len for t in short.training_tasks()) <= 2048
    assert {t.name for t in short.evaluation_tasks()} == {"passkey", "multi_needle"}
    assert short.eval_n >= 16 and long.eval_max == {"store_all": 131072}
    assert long.warmup_steps > short.warmup_steps
    assert long.train_config().steps > short.train_config().steps
    demo.main(["--print-spec", "--long"])
    assert AblationSpec.from_dict(json.loads(capsys.readouterr().out)).eval_lengths == \
        long.eval_lengths
    demo.main(["--print-spec", "--variants", "gumbel,importance"])
    asked = AblationSpec.from_dict(json.loads(capsys.readouterr().out))
    assert asked.variants == ["gumbel", "importance"]
    assert asked.config("gumbel").ltm_controller == "gumbel"
    demo.main(["--print-spec", "--variants", "qlearning,full", "--controller-seeds", "0,1,2"])
    seeded = AblationSpec.from_dict(json.loads(capsys.readouterr().out))
    assert seeded.variants == ["qlearning", "full"] and seeded.seeds_of("full") == [0, 1, 2]
    with pytest.raises(SystemExit):
        demo.main(["--print-spec", "--controller-seeds", "0,a"])
    assert "--controller-seeds: expected comma-separated ints, got '0,a'" in \
        capsys.readouterr().err
    for argv, message in ((["--seeds", "0,a"], "--seeds: expected comma-separated ints"),
                          (["--seeds", "2,2"], "--seeds: expected distinct ints >= 0"),
                          (["--seeds", "0", "--controller-seeds", "0,1"], "not both")):
        with pytest.raises(SystemExit):
            demo.main(["--print-spec", *argv])
        assert message in capsys.readouterr().err


def test_demo_compiles_unless_told_not_to(monkeypatch, capsys):
    """The demo leaves MEMMODEL_COMPILE as it finds it (auto: compiled where a C++ compiler
    is) and sets it to 0 with --no-compile, before any model is built."""
    from memmodel.training import demo

    monkeypatch.setenv("MEMMODEL_COMPILE", "auto")
    demo.main(["--print-spec"])
    assert os.environ["MEMMODEL_COMPILE"] == "auto"
    demo.main(["--print-spec", "--no-compile"])
    assert os.environ["MEMMODEL_COMPILE"] == "0"
    capsys.readouterr()


def test_warmup_tasks_are_a_curriculum_for_phase_one(tmp_path):
    easy = [dict(name="passkey", seq_len=63, chunk_size=8, key_len=1)]
    spec = AblationSpec.from_dict({**TINY, "variants": ["ssm", "fifo"], "eval_lengths": [128],
                                   "warmup_tasks": easy})
    assert [t.seq_len for t in spec.warming_tasks()] == [63]
    assert len(spec.training_tasks()) == 2
    resolved = spec.resolved()
    assert resolved["warmup_tasks"][0]["name"] == "passkey"
    assert AblationSpec.from_dict(resolved).resolved() == resolved
    run_ablation(spec, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "Warm-up tasks (a curriculum): passkey seq_len=63" in table
    with pytest.raises(ValueError, match=r"warmup_tasks: given, but warmup_steps is 0"):
        AblationSpec.from_dict({**TINY, "warmup_tasks": easy, "warmup_steps": 0})
    with pytest.raises(ValueError, match=r"warmup_tasks: expected None or a non-empty list"):
        AblationSpec.from_dict({**TINY, "warmup_tasks": []})


def test_eval_max_stops_a_variant_at_its_length(tmp_path):
    spec = AblationSpec.from_dict({**TINY, "eval_max": {"fifo": 128}})
    assert spec.lengths_of("fifo") == [128] and spec.lengths_of("ssm") == [128, 256]
    rows = run_ablation(spec, tmp_path)
    assert [(r["variant"], r["T"]) for r in rows] == [("ssm", 128), ("ssm", 256), ("fifo", 128)]
    assert "fifo is not evaluated beyond T = 128 (eval_max): no row at 256" in \
        (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match=r"AblationSpec.eval_max: expected \{variant: positive"):
        AblationSpec.from_dict({**TINY, "eval_max": {"fast": 128}})


def test_workers_give_the_rows_of_one_process(tmp_path):
    """Two worker processes (the warm-up in one while ssm trains in the other) write the
    rows one process writes, in the spec's order, and the same models."""
    spec = AblationSpec.from_dict({**TINY, "variants": ["fifo", "ssm", "importance"]})
    one = run_ablation(spec, tmp_path / "one")
    two = run_ablation(spec, tmp_path / "two", workers=2)
    keep = ("variant", "task", "T", "n", "accuracy", "entries", "state_bytes",
            "answer_loss", "train_steps", "warmup_steps", "warmup_shared")
    assert [{k: r[k] for k in keep} for r in two] == [{k: r[k] for k in keep} for r in one]
    assert json.loads((tmp_path / "two" / "results.json").read_text())[0]["variant"] == "fifo"
    for variant in ("fifo", "ssm", "importance"):
        a = load_checkpoint(tmp_path / "one" / "models" / f"{variant}.pt")[0].state_dict()
        b = load_checkpoint(tmp_path / "two" / "models" / f"{variant}.pt")[0].state_dict()
        # one thread per worker against two here: sums in another order, through Adam
        assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    with pytest.raises(ValueError, match="positive int workers"):
        run_ablation(spec, tmp_path / "bad", workers=0)


def test_controller_seeds_train_a_copy_each_and_pool_their_rows(tmp_path):
    spec = AblationSpec.from_dict({**TINY, "variants": ["qlearning"], "controller_seeds": [0, 5],
                                   "eval_lengths": [128]})
    rows = run_ablation(spec, tmp_path)
    (row,) = rows
    assert row["n"] == 2 * TINY["eval_n"] and row["seeds"] == [0, 5]
    assert len(row["seed_accuracy"]) == 2 and row["seed_std"] >= 0
    assert row["accuracy"] == pytest.approx(sum(row["seed_accuracy"]) / 2)
    a = load_checkpoint(tmp_path / "models" / "qlearning.pt")[1]
    b = load_checkpoint(tmp_path / "models" / "qlearning-seed5.pt")[1]
    assert (a.rl.seed, b.rl.seed) == (0, 5)
    assert "2 seeds:" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="qlearning\\['seed'\\] too"):
        AblationSpec.from_dict({**TINY, "controller_seeds": [0, 1], "qlearning": {"seed": 3}})
    with pytest.raises(ValueError, match="distinct ints"):
        AblationSpec.from_dict({**TINY, "controller_seeds": [1, 1]})


def test_pool_seeds_pools_the_queries():
    def row(acc, n, entries):
        return dict(task="t", T=8, n=n, accuracy=acc, sequences=n, entries=entries,
                    state_bytes=10.0, tokens_per_s=100.0, token_accuracy=acc, answer_loss=1.0,
                    rss_increase_mb=0.0, train_seconds=1.0, peak_rss_mb=5.0, seeds=[0],
                    ci_low=0.0, ci_high=1.0)
    (p,) = ablation.pool_seeds([[row(1.0, 4, 2.0)], [dict(row(0.5, 4, 4.0), seeds=[1],
                                                         peak_rss_mb=7.0)]])
    assert p["n"] == 8 and p["accuracy"] == 0.75 and p["entries"] == 3.0
    assert p["seed_accuracy"] == [1.0, 0.5] and p["seeds"] == [0, 1]
    assert p["seed_std"] == pytest.approx(0.5 ** 0.5 * 0.5) and p["peak_rss_mb"] == 7.0
    assert (p["ci_low"], p["ci_high"]) == ablation.wilson_interval(6, 8)
    with pytest.raises(ValueError, match="same \\(task, T\\)"):
        ablation.pool_seeds([[row(1.0, 4, 2.0)], [dict(row(1.0, 4, 2.0), T=16)]])


def test_training_seeds_run_the_whole_ablation_each_and_pool_its_rows(tmp_path):
    spec = AblationSpec.from_dict({**TINY, "eval_lengths": [128]})
    rows = ablation.run_seeds(spec, [0, 3], tmp_path)
    assert [(r["variant"], r["T"]) for r in rows] == [("ssm", 128), ("fifo", 128)]
    for r in rows:
        own = [json.loads((tmp_path / f"seed-{s}" / "results.json").read_text())
               for s in (0, 3)]
        accs = [next(x["accuracy"] for x in run if x["variant"] == r["variant"]) for run in own]
        assert r["train_seeds"] == [0, 3] and r["seed_accuracy"] == accs
        assert r["n"] == 2 * TINY["eval_n"]
        assert r["accuracy"] == pytest.approx(sum(accs) / 2)
    for s in (0, 3):
        assert json.loads((tmp_path / f"seed-{s}" / "spec.json").read_text())["seed"] == s
        assert (tmp_path / f"seed-{s}" / "models" / "fifo.pt").exists()
    a = load_checkpoint(tmp_path / "seed-0" / "models" / "ssm.pt")[0].state_dict()
    b = load_checkpoint(tmp_path / "seed-3" / "models" / "ssm.pt")[0].state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # another initialisation
    resolved = json.loads((tmp_path / "spec.json").read_text())
    assert resolved["train_seeds"] == [0, 3]
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    table = (tmp_path / "results.md").read_text()
    assert "Pooled over training seeds 0, 3" in table and "2 seeds:" in table


def test_training_seeds_are_checked_before_anything_runs(tmp_path):
    spec = AblationSpec.from_dict(TINY)
    for bad in ([], [1, 1], [-1], [0.5], "0,1"):
        with pytest.raises(ValueError, match="distinct ints >= 0"):
            ablation.run_seeds(spec, bad, tmp_path / "x")
    with pytest.raises(ValueError, match="not both"):
        ablation.run_seeds(AblationSpec.from_dict({**TINY, "controller_seeds": [0, 1]}), [0],
                           tmp_path / "x")
    with pytest.raises(ValueError, match="qlearning\\['seed'\\] = 4"):
        ablation.run_seeds(AblationSpec.from_dict({**TINY, "qlearning": {"seed": 4}}), [0],
                           tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "y"), "--seeds", "0,0"])
    assert not (tmp_path / "y").exists()
