"""``prunevid demo``: export, runtime with PruneVid and with the baseline, the table, the cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli import _partials, assert_one_line_error, invoke

from prunevid.costs import prefill_flops
from prunevid.demo import matches_spec, stages
from prunevid.model.config import TextConfig
from prunevid.runtime.report import Answer


def test_prefill_flops_by_hand() -> None:
    # c = 4, 2 heads of 2 (inner 4), 1 KV head (2), MLP 8, 3 layers, vocab 10:
    # per token and layer 2 (2*4*4 + 2*4*2 + 3*4*8) = 288; attention 2*2*4 per causal pair
    text = TextConfig(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1)
    # baseline, 5 tokens: 3 (288*5 + 16*15) + head 2*4*10 = 5040 + 80
    assert prefill_flops(text, 5) == 5120
    # K = 0: layer 0 on 5 tokens (1680), scoring 2*2 rows*5 keys*4 = 80, layers 1-2 on 3 tokens
    # 2 (288*3 + 16*6) = 1920, head 80
    assert prefill_flops(text, 5, kept=3, layer=0, question_rows=2) == 3760


def test_stage_rows_of_an_answer() -> None:
    answer = Answer("", [1, 2, 3], {"encoder": 256, "merged": 174, "kept": 63},
                    {"video": 5.0, "encoder": 2.0, "merge": 1.5, "prefill": 10.0, "decode": 4.0},
                    {"text": 73, "prefill": 247, "kept": 136}, settings={"mode": "prunevid"})
    rows = stages(answer, 16)
    assert [(r.tokens_in, r.tokens_out, r.ms) for r in rows] == [
        ("file", "16 frames", 5.0), ("16 frames", "256 tokens", 2.0), ("256", "174", 1.5),
        ("247 (174 vis)", "136 (63 vis)", 10.0), ("136 cached", "3 tokens", 4.0)]
    baseline = Answer("", [1], {"encoder": 256, "merged": 256, "kept": 256},
                      {"video": 5.0, "encoder": 2.0, "merge": 0.0, "prefill": 20.0, "decode": 1.0},
                      {"text": 73, "prefill": 329, "kept": 329}, settings={"mode": "none"})
    assert (stages(baseline, 16)[2].tokens_out, stages(baseline, 16)[2].ms) == ("skipped", None)


def test_cached_export_must_match_the_spec(tiny_export: Path, tmp_path: Path) -> None:
    assert matches_spec(tiny_export)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["merger"]["outputs"].pop()  # an older merger without an output
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert not matches_spec(copy)
    assert not matches_spec(tmp_path / "absent")


@pytest.mark.slow
def test_demo_end_to_end_then_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"PRUNEVID_CACHE": str(cache)}
    result = invoke(["demo", "--json"], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    first = json.loads(result.stdout)  # stdout holds the one object and nothing else
    assert first["export"]["reused"] is False and "random" in first["weights"]
    prunevid, none = first["modes"]["prunevid"], first["modes"]["none"]
    assert prunevid["settings"]["mode"] == "prunevid" and none["settings"]["mode"] == "none"
    assert none["visual_tokens"] == {"encoder": 256, "merged": 256, "kept": 256}
    assert prunevid["visual_tokens"]["kept"] < prunevid["visual_tokens"]["merged"] < 256
    assert 1 <= len(prunevid["token_ids"]) <= 8
    rows = prunevid["stages"]
    assert [r["name"] for r in rows] == [r["name"] for r in none["stages"]]
    assert rows[2]["tokens_out"] == str(prunevid["visual_tokens"]["merged"])
    assert none["stages"][2]["ms"] is None
    assert 0 < first["prefill_flops_saved"] < 1
    assert first["prefill_flops_saved"] == pytest.approx(
        1 - first["prefill_gflops"]["prunevid"] / first["prefill_gflops"]["none"])
    facts = json.loads(Path(first["explain"]).with_suffix(".json").read_text())
    assert (facts["counts"]["merged"], facts["counts"]["kept"]) == (
        prunevid["visual_tokens"]["merged"], prunevid["visual_tokens"]["kept"])
    exports = list((cache / "exports").iterdir())
    assert [p.name for p in exports] == [Path(first["export"]["path"]).name]

    result = invoke(["demo"], env=env)  # from the warm cache, as a person reads it
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.stdout
    assert "RANDOM weights" in out and "(cached)" in out and "exported now" not in out
    for needle in ("encoder", "merger", "prefill", "decode", "TTFT", "prefill FLOPs", "explain picture"):
        assert needle in out, needle
    assert f"answer token ids (prunevid): {prunevid['token_ids']}" in out
    assert list((cache / "exports").iterdir()) == exports and not _partials(cache)
    assert_one_line_error(invoke(["demo", "--video", tmp_path / "missing.mp4"], env=env), "not found", "no such")


def test_damaged_cached_model_is_rebuilt_only_if_prunevid_built_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    from prunevid.demo import cached_model, model_problem
    from prunevid.errors import ArtifactError
    from prunevid.progress import Progress

    cache = tmp_path / "cache"
    model = cache / "tiny-pllava"
    shutil.copytree(tiny_model_dir, model)
    assert model_problem(model) is None and cached_model(cache, "tiny", Progress(enabled=False)) == model
    shard = sorted(model.glob("model-*.safetensors"))[-1]
    good = shard.read_bytes()
    shard.write_bytes(good[:1000])  # truncated: the cache is prunevid's own, so it is rebuilt
    (model / "config.json").unlink()  # before the fix: make-tiny refused the folder, naming a --force demo lacks
    assert model_problem(model) is not None
    assert cached_model(cache, "tiny", Progress(enabled=False)) == model
    assert model_problem(model) is None and shard.read_bytes() == good  # same seed: the same weights again

    shard.write_bytes(good[:1000])
    (model / "notes.txt").write_text("mine")  # a file prunevid did not write: leave the folder alone
    env = {"PRUNEVID_CACHE": str(cache)}
    result = invoke(["demo"], env=env)
    assert_one_line_error(result, "damaged", "PRUNEVID_CACHE")
    assert "--force" not in result.output
    assert (model / "notes.txt").read_text() == "mine" and shard.read_bytes() == good[:1000]

    other = tmp_path / "other"
    (other / "tiny-pllava").mkdir(parents=True)
    (other / "tiny-pllava" / "weights.bin").write_text("a user's")  # no make-tiny marker: not ours
    with pytest.raises(ArtifactError, match="did not write") as info:
        cached_model(other, "tiny", Progress(enabled=False))
    assert "--force" not in str(info.value)
    assert (other / "tiny-pllava" / "weights.bin").read_text() == "a user's"


def test_damaged_cached_export_not_written_by_prunevid_is_left_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    from prunevid.config import PruneConfig
    from prunevid.demo import cached_export, export_key
    from prunevid.errors import ArtifactError
    from prunevid.exporter.export import ExportOptions
    from prunevid.progress import Progress

    out = tmp_path / "exports" / f"{tiny_model_dir.name}-{export_key(tiny_model_dir, PruneConfig(), ExportOptions())}"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text("{not json")  # not a prunevid export: it must survive
    (out / "plan.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="PRUNEVID_CACHE") as info:
        cached_export(tiny_model_dir, tmp_path, Progress(enabled=False))
    assert "--force" not in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "plan.txt"]
    assert (out / "plan.txt").read_text() == "mine"
