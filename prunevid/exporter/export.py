"""``prunevid export``: a checkpoint folder in, an export folder out.

    load checkpoint --> eager stages on sample inputs (also the trace inputs)
    --> per graph: torch.onnx.export (TorchScript exporter) --> attach prunevid op functions
        --> onnx.checker (full, strict shape inference) --> sha256
    --> tokenizer and preprocessor files, manifest.json

The folder is built beside the target and renamed into place at the end (see
:mod:`prunevid.outdir`), so an interrupted export never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunevid import __version__, spec
from prunevid.config import PruneConfig
from prunevid.errors import ConfigError, ModelDirError, read_json_object
from prunevid.plugins.ops import DOMAIN, DOMAIN_VERSION
from prunevid.runtime.artifact import sha256, write_manifest

# Weights above this go to an external data file (protobuf cannot serialise 2 GB; keep a margin).
EXTERNAL_DATA_BYTES = 1_800_000_000
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
SAMPLE_QUESTION = "What happens in this video?"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    """What ``prunevid export`` was asked for."""

    frames: int | None = None  # default: PruneConfig.frames, else the checkpoint's num_frames
    dtype: str = "fp32"
    opset: int = 18
    template: str | None = None  # None: the model family's template


def checkpoint_hash(model_dir: Path) -> str:
    """sha256 over the names and contents of config.json and every weight file."""
    from prunevid.model.checkpoint import weight_files

    digest = hashlib.sha256()
    for path in [model_dir / "config.json", *weight_files(model_dir)]:
        digest.update(path.name.encode())
        digest.update(sha256(path).encode())
    return digest.hexdigest()


def geometry(model, frames: int, cfg: PruneConfig) -> spec.Geometry:
    mc = model.cfg
    return spec.Geometry(
        frames=frames,
        tokens_per_frame=mc.tokens_per_frame,
        hidden=mc.text.hidden_size,
        image_size=mc.vision.image_size,
        num_layers=mc.text.num_hidden_layers,
        layer=cfg.layer,
        heads=mc.text.num_attention_heads,
        kv_heads=mc.text.kv_heads,
        head_dim=mc.text.dim_per_head,
        vocab=mc.text.vocab_size,
    )


def dim_ranges(g: spec.Geometry, max_positions: int) -> dict[str, dict[str, int]]:
    """min / opt / max of every symbolic dimension (TensorRT profiles, documentation)."""
    v = g.max_visual
    opt_text = 96
    return {
        "frames": {"min": 1, "opt": g.frames, "max": g.frames},
        "text_len": {"min": 2, "opt": opt_text, "max": max_positions},
        "visual_rows": {"min": 1, "opt": v, "max": v},
        "merged": {"min": 1, "opt": v // 2, "max": v},
        "seq": {"min": 2, "opt": opt_text + v // 2, "max": max_positions},
        "question": {"min": 1, "opt": opt_text // 2, "max": max_positions},
        "kept": {"min": 2, "opt": opt_text + v // 8, "max": max_positions},
        "new": {"min": 1, "opt": opt_text + v // 8, "max": max_positions},
        "cache": {"min": 1, "opt": opt_text + v // 8 + 64, "max": max_positions},
    }


class Exporter:
    """Builds the stages of one checkpoint and exports them graph by graph."""

    def __init__(self, checkpoint: Path, cfg: PruneConfig, options: ExportOptions, progress: Progress):
        from prunevid.model.checkpoint import load_model
        from prunevid.model.config import FAMILIES, read_config
        from prunevid.runtime.text import TextTokenizer, build_prompt
        from prunevid.runtime.video import Preprocess

        self.checkpoint, self.options, self.progress = Path(checkpoint), options, progress
        # refuse a preprocessor config the encoder cannot take before loading any weight
        model_cfg = read_config(self.checkpoint)
        self.preprocessor_defaults = FAMILIES[model_cfg.family].preprocessor_defaults
        Preprocess.from_json(self.checkpoint / spec.PREPROCESSOR_FILE, model_cfg.vision.image_size,
                             self.preprocessor_defaults)
        self.external_data_bytes = EXTERNAL_DATA_BYTES
        self.model, self.model_cfg = load_model(self.checkpoint, cfg.lora_alpha)
        frames = next(f for f in (options.frames, cfg.frames, self.model_cfg.num_frames) if f is not None)
        self.cfg = cfg.with_overrides(frames=frames)
        # every export carries the merger and the selection, whatever its default mode
        self.cfg.with_overrides(mode="prunevid").validate(self.model_cfg.text.num_hidden_layers)
        if options.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {options.dtype}")
        if not 17 <= options.opset <= 21:
            raise ConfigError(f"--opset must be in [17, 21], got {options.opset}")
        self.geometry = geometry(self.model, frames, self.cfg)
        self.graphs = spec.graphs(self.geometry)
        tok = TextTokenizer.from_dir(self.checkpoint)
        self.tokenizer = tok
        from prunevid.model.config import FAMILIES

        self.template = options.template or FAMILIES[self.model_cfg.family].template
        self.prompt = build_prompt(tok, SAMPLE_QUESTION, self.template, self.model_cfg.placeholder_index,
                                   self.model_cfg.after_visual_ids)

    def stages_and_inputs(self) -> dict[str, tuple[torch.nn.Module, tuple]]:
        """Each graph's module and trace inputs: the chain runs once over the torch stages (with
        selection and two decode steps) and each graph keeps the first feeds it received."""
        import numpy as np

        from prunevid.exporter.runners import RecordingRunner, TorchRunner
        from prunevid.exporter.stages import build_stages
        from prunevid.runtime.chain import Chain

        g = self.geometry
        gen = torch.Generator().manual_seed(0)
        pixels = torch.randn(g.frames, 3, g.image_size, g.image_size, generator=gen).numpy()
        stages = build_stages(self.model, self.cfg, g)
        runner = RecordingRunner(TorchRunner(stages, self.graphs))
        chain = Chain(runner, g)
        visual = chain.visual(chain.encode(pixels), merge=True)
        ids = np.asarray(self.prompt.ids, dtype=np.int64)
        state = chain.prefill(ids, self.prompt.image_pos, visual, select=True, max_new_tokens=3)
        list(chain.greedy(state, 3, None))
        return {name: (stages[name], tuple(torch.from_numpy(runner.feeds[name][t.name]) for t in graph.inputs))
                for name, graph in self.graphs.items()}

    def export_graph(self, name: str, module: torch.nn.Module, args: tuple, out: Path) -> dict[str, Any]:
        import onnx

        from prunevid.exporter.attention import MARKER_DOMAIN, lower
        from prunevid.plugins.onnx_functions import attach_functions

        graph = self.graphs[name]
        path = out / graph.file
        path.parent.mkdir(parents=True, exist_ok=True)
        axes = {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in graph.inputs + graph.outputs}
        dtype = DTYPES[self.options.dtype]
        module = module.to(dtype) if dtype != torch.float32 else module
        args = tuple(a.to(dtype) if t.dtype == "float" else a for t, a in zip(graph.inputs, args))
        before = set(path.parent.iterdir())
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=self.options.opset,
                input_names=graph.input_names, output_names=graph.output_names, dynamic_axes=axes,
                custom_opsets=({DOMAIN: DOMAIN_VERSION} if graph.custom_ops else {}) | {MARKER_DOMAIN: 1},
                do_constant_folding=True,
            )
        model = onnx.load(str(path))  # pulls in any external data the exporter wrote
        for stray in set(path.parent.iterdir()) - before - {path}:
            stray.unlink()  # per-tensor files of the exporter, now in memory; saved below as one file
        attach_functions(model)
        g = self.geometry
        lower(model, spec.STORED_ATTENTION, g.heads, g.kv_heads, g.head_dim, half=dtype == torch.float16)
        external = self._save(model, path)
        onnx.checker.check_model(str(path), full_check=True)
        files = [path] + ([path.with_suffix(".onnx.data")] if external else [])
        return {
            "file": graph.file,
            "sha256": {f.name: sha256(f) for f in files},
            "external_data": external,
            "inputs": [self._tensor_entry(t) for t in graph.inputs],
            "outputs": [self._tensor_entry(t) for t in graph.outputs],
            "doc": graph.doc,
        }

    def _save(self, model, path: Path) -> bool:
        """Save ``model`` (external data already loaded) as one file, or with one ``.data`` file
        beside it when its weights pass :data:`EXTERNAL_DATA_BYTES` (protobuf's 2 GB limit)."""
        import onnx

        weights = sum(t.ByteSize() for t in model.graph.initializer)
        if weights > self.external_data_bytes:
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)
            return True
        onnx.save_model(model, str(path))
        return False

    def _tensor_entry(self, t: spec.Tensor) -> dict[str, Any]:
        ranges = dim_ranges(self.geometry, self.model_cfg.text.max_position_embeddings)
        shape = {key: [ranges[d][key] if isinstance(d, str) else d for d in t.dims] for key in ("min", "opt", "max")}
        dtype = {"fp32": "float32", "fp16": "float16"}[self.options.dtype] if t.dtype == "float" else t.dtype
        return {"name": t.name, "dtype": dtype, "dims": list(t.dims), **shape}

    def manifest(self, graph_entries: dict[str, Any]) -> dict[str, Any]:
        import onnx

        mc = self.model_cfg
        return {
            "format_version": spec.FORMAT_VERSION,
            "family": mc.family,
            "versions": {"prunevid": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
            "opset": self.options.opset,
            "dtype": self.options.dtype,
            "source": {"path": str(self.checkpoint.resolve()), "sha256": checkpoint_hash(self.checkpoint)},
            "prune": self.cfg.to_json(exclude=spec.GEOMETRY_SETTINGS),  # K and frames: in "geometry" only
            "geometry": self.geometry.__dict__,
            "model": {
                "image_token_index": mc.placeholder_index,  # the id the visual rows replace
                "after_visual_ids": list(mc.after_visual_ids),  # e.g. OneVision's newline row
                "max_position_embeddings": mc.text.max_position_embeddings,
                "template": self.template,
            },
            "dims": dim_ranges(self.geometry, mc.text.max_position_embeddings),
            # decoder attention as stored, and the form each backend family runs (derived on load)
            "attention": {"stored": spec.STORED_ATTENTION, "targets": dict(spec.TARGET_ATTENTION)},
            "graphs": graph_entries,
            "files": {},
        }


def copy_support_files(src: Path, out: Path, preprocessor_defaults: tuple[tuple[str, Any], ...] = ()) -> dict[str, str]:
    """Tokenizer, preprocessor and config files the runtime reads, with their hashes.

    The preprocessor config gets the family's ``preprocessor_defaults`` written in for the keys it
    leaves out, so that the torch-free runtime reads the export's file as the eager reference reads
    the checkpoint's, without knowing the family."""
    hashes = {}
    for name in (*spec.TOKENIZER_FILES, spec.PREPROCESSOR_FILE, "config.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
            if name == spec.PREPROCESSOR_FILE:
                _fill_defaults(out / name, preprocessor_defaults)
            hashes[name] = sha256(out / name)
    if "tokenizer.json" not in hashes:
        raise ModelDirError(f"no tokenizer.json in {src}")
    return hashes


def _fill_defaults(path: Path, defaults: tuple[tuple[str, Any], ...]) -> None:
    """Add to the JSON object in ``path`` each ``(key, value)`` of ``defaults`` whose key it lacks."""
    data = read_json_object(path, ConfigError, f"preprocessor config {path}")
    missing = {key: value for key, value in defaults if key not in data}
    if missing:
        path.write_text(json.dumps({**data, **missing}, indent=2) + "\n")


def export(checkpoint: str | Path, out: str | Path, cfg: PruneConfig, options: ExportOptions,
           *, force: bool = False, progress: Progress = lambda _msg: None) -> Path:
    """Export every graph of ``checkpoint`` into ``out`` atomically; returns ``out``."""
    from prunevid.outdir import EXPORT, write_folder

    out = Path(out)
    with write_folder(out, EXPORT, force=force, source=checkpoint) as tmp:  # refuses before any heavy work
        progress(f"loading {checkpoint}")
        exporter = Exporter(Path(checkpoint), cfg, options, progress)
        progress("running the stages eagerly for trace inputs")
        plan = exporter.stages_and_inputs()
        entries = {}
        for i, name in enumerate(spec.GRAPH_ORDER, 1):
            progress(f"[{i}/{len(spec.GRAPH_ORDER)}] exporting {name}")
            module, args = plan[name]
            entries[name] = exporter.export_graph(name, module, args, tmp)
        progress("hashing the source checkpoint")
        manifest = exporter.manifest(entries)
        manifest["files"] = copy_support_files(exporter.checkpoint, tmp, exporter.preprocessor_defaults)
        write_manifest(tmp, manifest)
    return out
