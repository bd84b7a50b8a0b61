"""The GPU benchmark scripts run end to end on a CPU (benchmarks/dry_run.py: Triton's
interpreter, CUDA stood in for by the CPU, toy sizes), their correctness checks included,
so that a script error never costs GPU time. The timings are not looked at."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(script, *args, timeout=600):
    proc = subprocess.run([sys.executable, "benchmarks/dry_run.py", f"benchmarks/{script}",
                           "--tiny", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def finite(x):
    return isinstance(x, float) and math.isfinite(x)


@pytest.fixture(scope="module")
def warm_checkpoint(tmp_path_factory):
    """A model of the demo's config after one warm-up step, saved once for the scripts that
    start from the demo's warm-up or a saved model (built on the PyTorch path, not Triton's
    interpreter, which "auto" would pick here: slow)."""
    from memmodel.training.ablation import AblationSpec, warm_up
    from memmodel.training.demo import demo_spec

    path = str(tmp_path_factory.mktemp("warm") / "warm.pt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMMODEL_BACKEND", "torch")
        spec = AblationSpec.from_dict({**demo_spec().to_dict(), "warmup_steps": 1})
        warm_up(spec, path)
    return path


@pytest.mark.slow
def test_bench_selective_scan_dry_run(tmp_path):
    path = tmp_path / "scan.jsonl"
    dry_run("bench_selective_scan.py", "--json", str(path))
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    by_name = {}
    for rec in recs:
        by_name.setdefault(rec["name"], []).append(rec)
    assert by_name["check_fwd"][0]["rel_y"] < 1e-2
    assert len(by_name["memmodel_triton_scan"]) == 2
    assert all(finite(r["fwd_ms"]) and finite(r["fwdbwd_x_floor"])
               for r in by_name["memmodel_triton_scan"])
    assert by_name["memmodel_triton_scan_long"][0]["ok"] is True
    assert finite(by_name["memmodel_triton_decode_step"][0]["ms"])
    table = subprocess.run([sys.executable, "benchmarks/summarize.py", str(path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "memmodel_triton_scan_long" in table.stdout, table.stderr


@pytest.mark.slow
def test_bench_gated_cache_dry_run(tmp_path):
    path = tmp_path / "gc.json"
    dry_run("bench_gated_cache.py", "--mode", "gpu", "--json", str(path))
    res = json.loads(path.read_text())
    assert res["check_chunk_vs_oracle"] < 2e-2 and res["check_fused_vs_oracle"] < 2e-2
    for name in ("chunk", "fused_recurrent"):
        for mode in ("fwd", "fwdbwd"):
            assert finite(res[f"{name}_{mode}_ms"]), (name, mode)


@pytest.mark.slow
def test_bench_ltm_dry_run(tmp_path):
    path = tmp_path / "ltm.json"
    dry_run("bench_ltm.py", "--dtype", "fp16", "--json", str(path))
    res = json.loads(path.read_text())
    assert len(res["correctness_rel_rms"]) == 11
    assert all(err < 2e-3 for err in res["correctness_rel_rms"].values())
    assert finite(res["chunk_compress"]["frac_fwd"])
    assert finite(res["memory_retrieve"]["speedup_fwd_bwd"])
    assert [r["T"] for r in res["retrieve_scaling"]] == [64, 128]
    assert res["module"]["boundaries"] == 3 and finite(res["module"]["ms_fwd_bwd"])


def test_sweep_qlearning_costs_runs_and_counts_reads(tmp_path, warm_checkpoint):
    """The cost sweep end to end at toy sizes: one training step per setting from a warm
    model of the demo's config, rows with entries and the fraction of chunks read. The
    PyTorch path (not Triton's interpreter, which "auto" would pick here: slow). The
    passkey with a question, and reads explored uniformly."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/sweep_qlearning_costs.py", "--warm",
         warm_checkpoint, "--baselines", str(tmp_path / "none.json"), "--steps",
         "1", "--T", "512", "--n", "2", "--memory-costs", "0", "--retrieve-costs", "0,0.5",
         "--question", " The key is", "--guided-read", "0", "--prior-read", "0",
         "--read-steps", "1", "--out",
         str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MEMMODEL_COMPILE": "0", "MEMMODEL_BACKEND": "torch"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "costs.json").read_text())
    assert [(r["retrieve_cost"], r["task"]) for r in rows] == [
        (0.0, "passkey"), (0.0, "multi_needle"), (0.5, "passkey"), (0.5, "multi_needle")]
    assert all(0 <= r["reads"] <= 1 and 0 <= r["entries"] <= 4 and r["n"] >= 2 for r in rows)
    assert all(r["question"] == " The key is" and r["guided_read"] == 0 and r["read_steps"] == 1
               and r["prior_read"] == 0 for r in rows)
    assert "| qlearning | 0 | 0.5 |" in proc.stdout


@pytest.mark.slow
def test_sweep_qlearning_prior_counts_the_decisions_that_are_importances(tmp_path,
                                                                          warm_checkpoint):
    """The prior sweep end to end at toy sizes: one training step per setting from a warm
    model of the demo's config, rows at two lengths, the share of decisions that agree
    with importance counted at the first; with a prior far above any Q value every
    decision agrees."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/sweep_qlearning_prior.py", "--warm",
         warm_checkpoint, "--steps", "1", "--lengths", "512,256", "--n", "2",
         "--priors", "0,1000", "--variants", "qlearning", "--out", str(tmp_path / "out"),
         "--qlearning", '{"guided": 0.5, "guided_read": 1.0}'],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MEMMODEL_COMPILE": "0", "MEMMODEL_BACKEND": "torch"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "prior.json").read_text())
    assert [(r["prior"], r["task"], r["T"]) for r in rows] == [
        (p, task, T) for p in (0.0, 1000.0) for task in ("passkey", "multi_needle")
        for T in (512, 256)]
    counted = [r for r in rows if r["T"] == 512]
    assert all(0 <= r["agree_store"] <= 1 and 0 <= r["agree_read"] <= 1 for r in counted)
    assert all("agree_store" not in r for r in rows if r["T"] == 256)
    for r in counted:
        if r["prior"] == 1000.0:
            assert r["agree_store"] == r["agree_read"] == 1.0
            assert r["agree_select"] in (None, 1.0)
    assert "| qlearning | 1000 | passkey | 512 |" in proc.stdout
    assert all(r["qlearning"] == {"guided": 0.5, "guided_read": 1.0} for r in rows)
    for args, message in [(["--variants", "fifo"], "--variants: expected some of"),
                          (["--qlearning", '{"prior": 1}'], "other than prior"),
                          (["--qlearning", '{"guided": 2}'], "--qlearning: QLearningConfig"),
                          (["--qlearning", '{"nope": 1}'], "--qlearning: ")]:
        bad = subprocess.run([sys.executable, "benchmarks/sweep_qlearning_prior.py", "--warm",
                              warm_checkpoint, *args],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr[-500:])


def test_eval_models_streams_a_saved_model_at_the_lengths(tmp_path, warm_checkpoint):
    """eval_models end to end at toy sizes: a model saved by the demo's warm-up, loaded and
    streamed through both demo tasks at two lengths, a row each."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/eval_models.py", warm_checkpoint, "--lengths",
         "256,640", "--n", "2", "--no-progress", "--out", str(tmp_path / "hold.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MEMMODEL_COMPILE": "0", "MEMMODEL_BACKEND": "torch"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "hold.json").read_text())
    assert [(r["task"], r["T"]) for r in rows] == [
        ("passkey", 256), ("passkey", 640), ("multi_needle", 256), ("multi_needle", 640)]
    assert all(0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1 for r in rows)
    assert all(r["changes"] == {} for r in rows)
    changed = subprocess.run(
        [sys.executable, "benchmarks/eval_models.py", warm_checkpoint, "--lengths",
         "256", "--n", "2", "--no-progress", "--out", str(tmp_path / "repeats.json"),
         "--task", '{"name": "multi_needle", "repeats": 2}'],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MEMMODEL_COMPILE": "0", "MEMMODEL_BACKEND": "torch"})
    assert changed.returncode == 0, changed.stderr[-3000:]
    rows = json.loads((tmp_path / "repeats.json").read_text())
    assert [(r["task"], r["T"], r["changes"]) for r in rows] == [
        ("multi_needle", 256, {"repeats": 2})]
    bad = subprocess.run([sys.executable, "benchmarks/eval_models.py", str(tmp_path / "no.pt")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "models: " in bad.stderr and "does not exist" in bad.stderr
    for task, message in [('{"name": "mqar"}', "expected one of the demo's tasks"),
                          ('{"repeats": 2}', "expected a JSON object with a task name"),
                          ('{"name": "multi_needle", "repeats": 0}',
                           "MultiNeedleTask.repeats: expected a positive int, got 0")]:
        bad = subprocess.run(
            [sys.executable, "benchmarks/eval_models.py", warm_checkpoint, "--task",
             task], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "--task: " in bad.stderr and message in bad.stderr


def test_bank_contents_counts_what_a_store_all_bank_holds(tmp_path, warm_checkpoint):
    """bank_contents at toy size on the demo's warm-up (a store_all bank: every chunk kept):
    every fact held, none lost, and the counts add up."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/bank_contents.py", warm_checkpoint, "--lengths",
         "256,400", "--n", "3", "--out", str(tmp_path / "bank.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MEMMODEL_COMPILE": "0", "MEMMODEL_BACKEND": "torch"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "bank.json").read_text())
    assert [r["T"] for r in rows] == [256, 400]
    for r in rows:
        chunks = (r["T"] - 2 * 4 + 1) // 16  # the whole chunks before the two queries
        assert r["entries"] == chunks and r["merged"] == 0
        assert r["fact"] + r["decoy"] + r["filler"] == r["entries"]
        assert r["distinct_facts"] == 4 and r["asked_held"] == 1.0
        assert r["repeated_fact_entries"] > 0  # each fact is stated three times
        assert -1 <= r["copy_similarity"] <= 1 and -1 <= r["other_similarity"] <= 1
    bad = subprocess.run([sys.executable, "benchmarks/bank_contents.py", warm_checkpoint,
                          "--task", '{"repeats": 0}'], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--task: MultiNeedleTask.repeats" in bad.stderr


def test_cpu_compile_cost_refuses_what_it_cannot_measure(tmp_path):
    """cpu_compile_cost measures compilation, so with the fast paths eager it says so, and a
    variant that the demo does not have is named (its compiling run is minutes: a benchmark,
    not a test)."""
    for env, args, message in [
            ({"MEMMODEL_COMPILE": "0"}, [], "the CPU fast paths run eagerly here"),
            ({}, ["--variant", "nope"], "--variant: expected one of"),
            ({}, ["--steps", "0"], "--steps: expected a positive int, got 0"),
            ({"MEMMODEL_COMPILE": "1"}, ["--scan-chunk-size", "0"],
             "--scan-chunk-size: MemoryConfig.scan_chunk_size")]:
        bad = subprocess.run(
            [sys.executable, "benchmarks/cpu_compile_cost.py", "--out", str(tmp_path / "c.json"),
             *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, **env})
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr[-500:])
        assert not (tmp_path / "c.json").exists()
