"""benchmarks/bench_throughput.py: its Transformer baseline streams exactly, its parsers
refuse bad input, and a tiny run writes every output with the ratios of the same run."""

import json
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_throughput as bt  # noqa: E402


def test_lengths_parse_and_bad_ones_are_refused():
    assert bt.parse_lengths("4K,1K,1M,300") == [300, 1024, 4096, 1 << 20]
    with pytest.raises(Exception, match="expected a length"):
        bt.parse_lengths("4Q")
    with pytest.raises(Exception, match="expected names"):
        bt.parse_names("ssm,nope", bt.ALL_VARIANTS, "variants")
    with pytest.raises(Exception, match="variant=length"):
        bt.parse_limits("transformer")


def test_the_transformer_streamed_with_its_cache_equals_one_call():
    torch.manual_seed(0)
    model = bt.TransformerLM(d_model=32, n_layers=2, heads=4).eval()
    model.layers[0].attn.query_block = 24  # several query blocks per segment
    ids = torch.randint(0, 256, (2, 150))
    with torch.no_grad():
        whole, _, _ = model(ids)
        state, parts = None, []
        for s in range(0, 150, 64):
            logits, _, state = model(ids[:, s:s + 64], state=state)
            parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=1e-5)
    assert state[0][0].shape == (2, 4, 150, 8)


def test_the_transformer_matches_the_ssm_in_width_and_depth():
    sizes = bt.Sizes(d_model=64, n_layers=3)
    ssm, tr = bt.build("ssm", sizes, "cpu"), bt.build("transformer", sizes, "cpu")
    assert ssm.config.d_model == tr.embedding.embedding_dim == 64
    assert len(ssm.layers) == len(tr.layers) == 3


def test_a_tiny_run_writes_the_tables_and_the_ratios(tmp_path):
    result = bt.main(["--variants", "ssm,fifo,transformer", "--lengths", "64,128",
                      "--segment", "64", "--d-model", "16", "--batch", "1", "--repeats", "1",
                      "--modes", "infer,train", "--out", str(tmp_path), "--no-progress",
                      "--max-length", "transformer=64", "--train-max", "64"])
    saved = json.loads((tmp_path / "throughput.json").read_text())
    assert saved["complete"] and saved["rows"] == json.loads(json.dumps(result["rows"]))
    rows = {(r["mode"], r["variant"], r["T"]): r for r in saved["rows"]}
    assert rows[("infer", "ssm", 128)]["vs_ssm"] == 1.0
    fifo = rows[("infer", "fifo", 128)]
    assert fifo["vs_ssm"] == pytest.approx(
        fifo["tokens_per_s"] / rows[("infer", "ssm", 128)]["tokens_per_s"])
    assert rows[("infer", "transformer", 128)]["skipped"].startswith("above --max-length")
    assert rows[("train", "fifo", 128)]["skipped"].startswith("above --train-max")
    assert rows[("train", "fifo", 64)]["peak_mb"] > 0
    assert "| ssm |" in (tmp_path / "throughput.md").read_text()
    assert {t["status"] for t in saved["targets"]} <= {"met", "missed", "not measured"}


def test_ltm_chunk_size_reaches_every_long_term_memory_variant():
    """--ltm-chunk-size sets the entries' chunk of every variant with a long-term memory
    (the spec's 32 otherwise) and leaves the rest of the model as it was."""
    base, big = bt.spec_for(bt.Sizes()), bt.spec_for(bt.Sizes(ltm_chunk_size=256))
    for v in ("fifo", "importance", "qlearning", "full"):
        assert base.config(v).ltm_chunk_size == 32
        assert big.config(v).ltm_chunk_size == 256
        assert big.config(v).d_model == base.config(v).d_model
    assert big.config("ssm") == base.config("ssm")
    assert bt.build_parser().parse_args(["--ltm-chunk-size", "256"]).ltm_chunk_size == 256
