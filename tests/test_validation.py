"""Malformed files and inputs end in one ``Error: <file>: <field> ...`` line, never a traceback.

Every case edits one file of a copy of the tiny checkpoint (or of its export) and runs the CLI:
exit status 1, exactly one line starting with ``Error:`` that names the file and the field, and no
output folder for ``export``.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from prunevid import spec
from prunevid.cli import cli

QUESTION = "What is happening in the video?"
INDEX = "model.safetensors.index.json"


def invoke(args: list) -> Result:
    kwargs = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}
    return CliRunner(**kwargs).invoke(cli, [str(a) for a in args])


def assert_error(result: Result, *needles: str) -> str:
    """Exit 1 through click's error path; the output ends with the only ``Error:`` line (before it
    only progress lines such as export's "loading ..."), which contains every needle."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output
    assert [line for line in lines if "Error" in line] == lines[-1:], lines
    out = lines[-1]
    assert out.startswith("Error: "), out
    for needle in needles:
        assert needle in out, (needle, out)
    return out


def copy_with(src: Path, dst: Path, name: str, edit: Callable[[dict], object]) -> Path:
    """Copy folder ``src`` to ``dst`` and rewrite its JSON file ``name`` through ``edit``."""
    shutil.copytree(src, dst, symlinks=True)
    path = dst / name
    data = json.loads(path.read_text())
    result = edit(data)
    path.write_text(json.dumps(data if result is None else result))
    return dst


def _parent(data, keys):
    for key in keys[:-1]:
        data = data[key]
    return data


def setter(*keys_and_value):
    """An edit that sets ``data[k1][k2]... = value`` (the last argument)."""
    *keys, value = keys_and_value
    return lambda data: _parent(data, keys).__setitem__(keys[-1], value)


def deleter(*keys):
    """An edit that deletes ``data[k1][k2]...``."""
    return lambda data: _parent(data, keys).__delitem__(keys[-1])


def run_model(model_dir: Path, clip: Path, *extra, question: str = QUESTION) -> Result:
    return invoke(["run", "--model-dir", model_dir, "--video", clip, "--question", question,
                   "--max-new-tokens", "2", *extra])


def run_engine(engine_dir: Path, clip: Path, question: str = QUESTION) -> Result:
    return invoke(["run", "--engine-dir", engine_dir, "--video", clip, "--question", question, "--max-new-tokens", "2"])


def export_to(model_dir: Path, out: Path, *extra) -> Result:
    return invoke(["export", "--checkpoint", model_dir, "--out", out, *extra])


def assert_export_refused(model_dir: Path, tmp_path: Path, *needles: str) -> None:
    out = tmp_path / "export-out"
    assert_error(export_to(model_dir, out), *needles)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-out")]  # no staging left


# ---- config.json ------------------------------------------------------------------------------

CONFIG_CASES = {
    "patch_size 0": (setter("vision_config", "patch_size", 0), "vision_config.patch_size"),
    "vision heads 0": (setter("vision_config", "num_attention_heads", 0), "vision_config.num_attention_heads"),
    "text heads 0": (setter("text_config", "num_attention_heads", 0), "text_config.num_attention_heads"),
    "text hidden not divisible": (setter("text_config", "hidden_size", 66), "text_config.hidden_size"),
    "vision hidden not divisible": (setter("vision_config", "hidden_size", 33), "vision_config.hidden_size"),
    "vision_config list": (setter("vision_config", []), "vision_config"),
    "text_config list": (setter("text_config", [1, 2]), "text_config"),
    "string hidden size": (setter("text_config", "hidden_size", "64"), "text_config.hidden_size"),
    "string image size": (setter("vision_config", "image_size", "112"), "vision_config.image_size"),
    "negative layers": (setter("text_config", "num_hidden_layers", -1), "text_config.num_hidden_layers"),
    "huge layers": (setter("text_config", "num_hidden_layers", 10**12), "text_config.num_hidden_layers"),
    "huge vocab": (setter("text_config", "vocab_size", 10**12), "text_config.vocab_size"),
    "huge vision width": (setter("vision_config", "hidden_size", 10**9), "vision_config.hidden_size"),
    "float size": (setter("text_config", "intermediate_size", 128.5), "text_config.intermediate_size"),
    "bool size": (setter("vision_config", "num_hidden_layers", True), "vision_config.num_hidden_layers"),
    "image token = vocab": (lambda c: setter("image_token_index", c["text_config"]["vocab_size"])(c), "image_token_index"),
    "image token negative": (setter("image_token_index", -1), "image_token_index"),
    "pad token outside vocab": (setter("pad_token_id", 10**6), "pad_token_id"),
    "pooling_shape short": (setter("pooling_shape", [16, 4]), "pooling_shape"),
    "pooling_shape strings": (setter("pooling_shape", ["16", 4, 4]), "pooling_shape[0]"),
    "num_frames 0": (setter("num_frames", 0), "num_frames"),
    "rms eps NaN": (setter("text_config", "rms_norm_eps", float("nan")), "text_config.rms_norm_eps"),
    "rope theta negative": (setter("text_config", "rope_theta", -1.0), "text_config.rope_theta"),
    "bias as string": (setter("text_config", "attention_bias", "false"), "text_config.attention_bias"),
    "kv heads not dividing": (setter("text_config", "num_key_value_heads", 3), "text_config.num_key_value_heads"),
    "odd head dim": (setter("text_config", "head_dim", 15), "text_config.head_dim"),
    "context 0": (setter("text_config", "max_position_embeddings", 0), "text_config.max_position_embeddings"),
    "feature layer outside tower": (setter("vision_feature_layer", 99), "vision_feature_layer"),
    "channels 4": (setter("vision_config", "num_channels", 4), "vision_config.num_channels"),
    "architectures string": (setter("architectures", "PllavaForConditionalGeneration"), "architectures"),
    "rope_scaling list": (setter("text_config", "rope_scaling", [1]), "text_config.rope_scaling"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_json_field_errors(case, tiny_model_dir, scene_cut_clip, tmp_path):
    edit, field = CONFIG_CASES[case]
    model = copy_with(tiny_model_dir, tmp_path / "model", "config.json", edit)
    assert_error(run_model(model, scene_cut_clip), "config.json: ", field)


@pytest.mark.parametrize("case", ["patch_size 0", "vision_config list", "huge layers"])
def test_config_json_errors_refuse_export(case, tiny_model_dir, tmp_path):
    edit, field = CONFIG_CASES[case]
    model = copy_with(tiny_model_dir, tmp_path / "model", "config.json", edit)
    assert_export_refused(model, tmp_path, "config.json: ", field)


def test_every_config_dataclass_field_is_checked():
    """The field tables cover every attribute the config dataclasses read from config.json."""
    from dataclasses import fields

    from prunevid.model import config as mc

    assert {f.name for f in fields(mc.VisionConfig)} == {f.name for f in mc.VISION_FIELDS}
    assert {f.name for f in fields(mc.TextConfig)} == {f.name for f in mc.TEXT_FIELDS}
    top = {f.name for f in fields(mc.ModelConfig)} - {"family", "vision", "text", "extra"}
    assert top <= {f.name for f in mc.TOP_FIELDS}


# ---- safetensors index ------------------------------------------------------------------------

INDEX_CASES = {
    "weight_map list": (setter("weight_map", ["model-00001-of-00002.safetensors"]), "weight_map"),
    "weight_map missing": (deleter("weight_map"), "weight_map"),
    "non-string file": (lambda d: d["weight_map"].update({next(iter(d["weight_map"])): 5}), "weight_map["),
    "parent file": (lambda d: d["weight_map"].update({next(iter(d["weight_map"])): "../model-00001-of-00002.safetensors"}),
                    "weight_map["),
    "absolute file": (lambda d: d["weight_map"].update({next(iter(d["weight_map"])): "/etc/hostname"}), "weight_map["),
    "index is a list": (lambda d: [d], INDEX),
}


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_index_field_errors(case, tiny_model_dir, scene_cut_clip, tmp_path):
    edit, field = INDEX_CASES[case]
    model = copy_with(tiny_model_dir, tmp_path / "model", INDEX, edit)
    assert_error(run_model(model, scene_cut_clip), INDEX, field)


def test_index_error_refuses_export(tiny_model_dir, tmp_path):
    edit, field = INDEX_CASES["non-string file"]
    model = copy_with(tiny_model_dir, tmp_path / "model", INDEX, edit)
    assert_export_refused(model, tmp_path, INDEX, field)


# ---- preprocessor_config.json -----------------------------------------------------------------

PREPROCESS_CASES = {
    "resample 99": (setter("resample", 99), "resample"),
    "resample string": (setter("resample", "3"), "resample"),
    "crop smaller than tower": (setter("crop_size", {"height": 100, "width": 100}), "crop_size"),
    "crop not square": (setter("crop_size", {"height": 112, "width": 100}), "crop_size"),
    "crop int larger": (setter("crop_size", 224), "crop_size"),
    "size string": (setter("size", "big"), "size"),
    "size negative": (setter("size", {"shortest_edge": -5}), "size.shortest_edge"),
    "size huge": (setter("size", {"shortest_edge": 10**9}), "size.shortest_edge"),
    "flag as string": (setter("do_center_crop", "false"), "do_center_crop"),
    "no crop, aspect-keeping resize": (setter("do_center_crop", False), "do_center_crop"),
    "std zero": (setter("image_std", [0, 1, 1]), "image_std"),
    "mean NaN": (setter("image_mean", [float("nan"), 0.5, 0.5]), "image_mean[0]"),
    "rescale string": (setter("rescale_factor", "1/255"), "rescale_factor"),
}


@pytest.mark.parametrize("case", sorted(PREPROCESS_CASES))
def test_preprocessor_field_errors(case, tiny_model_dir, scene_cut_clip, tmp_path):
    edit, field = PREPROCESS_CASES[case]
    model = copy_with(tiny_model_dir, tmp_path / "model", spec.PREPROCESSOR_FILE, edit)
    assert_error(run_model(model, scene_cut_clip), spec.PREPROCESSOR_FILE, field)


@pytest.mark.parametrize("case", ["resample 99", "crop smaller than tower"])
def test_preprocessor_errors_refuse_export(case, tiny_model_dir, tmp_path):
    edit, field = PREPROCESS_CASES[case]
    model = copy_with(tiny_model_dir, tmp_path / "model", spec.PREPROCESSOR_FILE, edit)
    assert_export_refused(model, tmp_path, spec.PREPROCESSOR_FILE, field)


def test_preprocessor_crop_refused_when_the_runtime_loads(tiny_export, scene_cut_clip, tmp_path):
    """A consistent (re-sealed) export whose crop the encoder does not take is refused at load."""
    from prunevid.runtime.artifact import sha256, write_manifest

    root = copy_with(tiny_export, tmp_path / "export", spec.PREPROCESSOR_FILE, setter("crop_size", 96))
    manifest = json.loads((root / spec.MANIFEST).read_text())
    manifest["files"][spec.PREPROCESSOR_FILE] = sha256(root / spec.PREPROCESSOR_FILE)
    write_manifest(root, manifest)
    assert_error(run_engine(root, scene_cut_clip), spec.PREPROCESSOR_FILE, "crop_size", "112")


def test_preprocessor_square_resize_without_crop_is_accepted(tiny_model_dir, tmp_path):
    """``size {height, width}`` equal to the tower's input and no crop gives the right size: accepted."""
    from prunevid.runtime.video import Preprocess

    model = copy_with(tiny_model_dir, tmp_path / "model", spec.PREPROCESSOR_FILE,
                      lambda d: d.update(size={"height": 112, "width": 112}, do_center_crop=False))
    pp = Preprocess.from_json(model / spec.PREPROCESSOR_FILE, image_size=112)
    assert pp.square_resize and pp.shortest_edge == 112 and not pp.do_center_crop


# ---- tokenizer_config.json --------------------------------------------------------------------

TOKENIZER_CASES = {
    "add_bos_token string": (setter("add_bos_token", "yes"), "add_bos_token"),
    "bos_token number": (setter("bos_token", 7), "bos_token"),
}


@pytest.mark.parametrize("case", sorted(TOKENIZER_CASES))
def test_tokenizer_config_field_errors(case, tiny_model_dir, scene_cut_clip, tmp_path):
    edit, field = TOKENIZER_CASES[case]
    model = copy_with(tiny_model_dir, tmp_path / "model", "tokenizer_config.json", edit)
    assert_error(run_model(model, scene_cut_clip), "tokenizer_config.json", field)


# ---- weights ----------------------------------------------------------------------------------


def poison(model_dir: Path, dst: Path, change: Callable[[dict], None]) -> Path:
    """Copy ``model_dir`` and rewrite its first shard through ``change(tensors)``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, dst)
    shard = dst / "model-00001-of-00002.safetensors"
    tensors = load_file(str(shard))
    change(tensors)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return dst


def _first(tensors: dict, suffix: str) -> str:
    return next(k for k in sorted(tensors) if k.endswith(suffix))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight_refused_at_eager_load_with_its_name(value, tiny_model_dir, scene_cut_clip, tmp_path):
    names = []

    def change(tensors):
        names.append(_first(tensors, "mlp.down_proj.weight"))
        tensors[names[0]][0, 0] = value

    model = poison(tiny_model_dir, tmp_path / "model", change)
    out = assert_error(run_model(model, scene_cut_clip), "non-finite", "layers.0.mlp.down_proj.weight")
    assert "model-00001-of-00002.safetensors" in out


def test_non_finite_weight_refused_at_export(tiny_model_dir, tmp_path):
    model = poison(tiny_model_dir, tmp_path / "model",
                   lambda t: t[_first(t, "embed_tokens.weight")].__setitem__((3, 1), float("nan")))
    assert_export_refused(model, tmp_path, "non-finite", "embed_tokens.weight")


def test_lora_merge_overflow_refused_with_the_weight_name(tiny_model_dir, scene_cut_clip, tmp_path):
    def change(tensors):
        key_a = _first(tensors, ".lora_A.default.weight")
        tensors[key_a].fill_(1e20)
        tensors[key_a.replace("lora_A", "lora_B")].fill_(1e20)  # both in one shard: sorted keys

    model = poison(tiny_model_dir, tmp_path / "model", change)
    assert_error(run_model(model, scene_cut_clip), "non-finite", "LoRA", "proj.weight")


@pytest.mark.parametrize("alpha", ["1e300", "-1", "inf", "1e6"])
def test_lora_alpha_range(alpha, tiny_model_dir, scene_cut_clip):
    assert_error(run_model(tiny_model_dir, scene_cut_clip, "--lora-alpha", alpha), "--lora-alpha")


# ---- the question -----------------------------------------------------------------------------


@pytest.mark.parametrize("question", ["caf\udce9?", "a\x00b", "colour \x1b[31mred", "x\x7f", "a\rb"])
def test_question_that_is_not_text(question, tiny_model_dir, scene_cut_clip):
    assert_error(run_model(tiny_model_dir, scene_cut_clip, question=question), "question")


def test_question_with_newline_tab_and_non_ascii_is_accepted(tiny_model_dir):
    from prunevid.runtime.text import DEFAULT_TEMPLATE, TextTokenizer, build_prompt

    tok = TextTokenizer.from_dir(tiny_model_dir)
    prompt = build_prompt(tok, "Which one?\n(A) café\t(B) 日本", DEFAULT_TEMPLATE, 512)
    assert prompt.ids[prompt.image_pos] == 512 and len(prompt.ids) > 10


# ---- manifest.json ----------------------------------------------------------------------------

MANIFEST_CASES = {
    "geometry missing": (deleter("geometry"), "geometry"),
    "geometry string size": (setter("geometry", "frames", "16"), "geometry.frames"),
    "geometry unknown key": (setter("geometry", "colour", 1), "geometry.colour"),
    "graphs list": (lambda m: m.update(graphs=list(m["graphs"].values())), "graphs"),
    "graph file missing": (deleter("graphs", "encoder", "file"), "graphs.encoder.file"),
    "graph sha256 missing": (deleter("graphs", "encoder", "sha256"), "graphs.encoder.sha256"),
    "graph sha256 not hex": (setter("graphs", "encoder", "sha256", {"encoder.onnx": "abc"}), "graphs.encoder.sha256"),
    "graph file absolute": (setter("graphs", "encoder", "file", "/tmp/encoder.onnx"), "graphs.encoder.file"),
    "graph file parent": (setter("graphs", "encoder", "file", "../elsewhere/encoder.onnx"), "graphs.encoder.file"),
    "files missing": (deleter("files"), "files"),
    "files list": (setter("files", []), "files"),
    "file path parent": (lambda m: m["files"].update({"../tokenizer.json": "0" * 64}), "files"),
    "dtype unknown": (setter("dtype", "int8"), "dtype"),
    "source missing": (deleter("source"), "source"),
    "profile missing": (deleter("graphs", "decoder_early", "inputs", 0, "min"), "graphs.decoder_early.inputs[0].min"),
    "model block missing": (deleter("model"), "model"),
    "image token string": (setter("model", "image_token_index", "512"), "model.image_token_index"),
    "prune mode unknown": (setter("prune", "mode", "fast"), "prune"),
    "digest missing": (deleter("manifest_sha256"), "manifest_sha256"),
    "field edited": (setter("model", "template", "mvbench"), "manifest_sha256"),
    "setting edited": (setter("prune", "alpha", 0.9), "manifest_sha256"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_manifest_field_errors(case, tiny_export, scene_cut_clip, tmp_path):
    edit, field = MANIFEST_CASES[case]
    root = copy_with(tiny_export, tmp_path / "export", spec.MANIFEST, edit)
    assert_error(run_engine(root, scene_cut_clip), spec.MANIFEST, field)


def test_manifest_graph_symlink_escaping_the_folder_is_refused(tiny_export, scene_cut_clip, tmp_path):
    root = tmp_path / "export"
    shutil.copytree(tiny_export, root)
    outside = tmp_path / "outside.onnx"
    shutil.move(root / spec.GRAPH_DIR / "encoder.onnx", outside)
    (root / spec.GRAPH_DIR / "encoder.onnx").symlink_to(outside)  # same bytes, so the sha256 still matches
    assert_error(run_engine(root, scene_cut_clip), spec.MANIFEST, "outside")


def test_resealed_manifest_still_opens(tiny_export, tmp_path):
    """Sealing is deterministic and what the exporter writes: re-sealing an unchanged manifest opens."""
    from prunevid.runtime.artifact import open_artifact, write_manifest

    root = tmp_path / "export"
    shutil.copytree(tiny_export, root)
    before = (root / spec.MANIFEST).read_bytes()
    write_manifest(root, json.loads(before))
    assert (root / spec.MANIFEST).read_bytes() == before
    assert open_artifact(root).geometry.frames == 16


def test_non_utf8_byte_on_the_real_command_line(tiny_model_dir, scene_cut_clip):
    """The byte reaches Python as a lone surrogate (surrogateescape); one line, exit 1."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "LC_ALL": "C.UTF-8"}
    args = [sys.executable, "-m", "prunevid.cli", "run", "--model-dir", str(tiny_model_dir), "--video",
            str(scene_cut_clip), "--question", b"caf\xe9 ?", "--max-new-tokens", "1"]
    proc = subprocess.run(args, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: question is not valid UTF-8 text"), err
    assert "0xe9" in err[0] and proc.stdout == b""


# ---- the field checker itself -----------------------------------------------------------------


def test_field_checker_types_ranges_and_paths():
    from prunevid.errors import ConfigError
    from prunevid.fields import Field, check_fields

    table = (Field("n", "int", 1, 8), Field("x", "float", 0, 1, lo_open=True), Field("f", "bool"),
             Field("p", "path"), Field("s", "str", choices=("a", "b")), Field("opt", "int", nullable=True),
             Field("must", "int", required=True))
    good = {"n": 8, "x": 1, "f": False, "p": "graphs/a.onnx", "s": "b", "opt": None, "must": 0}
    assert check_fields(good, table, "f.json", ConfigError) == {k: v for k, v in good.items() if k != "opt"}
    bad = [({"n": True}, "n must be an integer in [1, 8], got true"), ({"n": 9}, "n must be in [1, 8], got 9"),
           ({"x": 0}, "x must be in (0, 1], got 0"), ({"x": float("inf")}, "x must be a finite number"),
           ({"f": 0}, "f must be true or false, got 0"), ({"p": "a/../../b"}, "p must be a relative path"),
           ({"p": "/abs"}, "p must be a relative path"), ({"s": "c"}, 's must be one of "a", "b", got "c"'),
           ({"s": "a\x00"}, "s is not valid text: it contains the control character U+0000"), ({}, "must is missing")]
    for change, message in bad:
        data = {**good, **change} if change else {k: v for k, v in good.items() if k != "must"}
        with pytest.raises(ConfigError) as exc:
            check_fields(data, table, "f.json", ConfigError)
        assert str(exc.value).startswith(f"f.json: {message}"), (change, str(exc.value))


def test_dataclass_tables_follow_their_dataclass():
    from dataclasses import dataclass

    from prunevid.fields import dataclass_fields

    @dataclass(frozen=True)
    class Sizes:
        width: int
        ratio: float = 0.5
        name: str = "x"
        shape: tuple = ()

    table = {f.name: f for f in dataclass_fields(Sizes, {"ratio": (0, 1)}, (1, 64))}
    assert set(table) == {"width", "ratio", "name"}  # tuple is not a JSON scalar: left to the constructor
    assert (table["width"].kind, table["width"].lo, table["width"].hi, table["width"].required) == ("int", 1, 64, True)
    assert (table["ratio"].kind, table["ratio"].hi, table["ratio"].required) == ("float", 1, False)


def test_config_without_architectures_names_the_file_and_field(tmp_path):
    from prunevid.errors import ModelDirError
    from prunevid.model.config import parse_config

    for raw in ({}, {"architectures": []}):
        with pytest.raises(ModelDirError, match=r"^config\.json: architectures is missing or empty \(supported: "):
            parse_config(raw)


def test_integer_bounds_are_written_in_full():
    from prunevid.fields import Field, _range_words

    assert _range_words(Field("x", "int", lo=0, hi=4194304)) == " in [0, 4194304]"
    assert _range_words(Field("x", "float", lo=0, hi=0.5)) == " in [0, 0.5]"
