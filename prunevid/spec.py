"""The contract between exporter, runtime and tests: graph names, tensor names, dtypes, symbolic
dimensions, and the layout of an export folder. Plain data; imports nothing heavy.

    pixel_values [T,3,H,W] --encoder--> visual_features [T,L,C]
    visual_features --merger--> merged_tokens [T*L,C] (first num_merged rows used), num_merged,
                                group_sizes [2T], window_sizes [T], token_of_cell [T,L]
    input_ids --embed--> embeds [n,C]            (the host splices merged rows in at image_pos)
    hidden, positions, cache_length, past.0..K --decoder_early (layers 0..K)-->
        hidden [n,C], score_query, score_key (layer K, pre-RoPE), present.0..K (new rows)
    score_query, score_key --score--> key_scores [S]   (host reads the visual block's columns)
    visual_scores, group_sizes, image_pos, input_ids --select--> keep_index [S] (first num_kept used, then the pad S), num_kept
    hidden, positions, cache_length, past.K+1.. --decoder_late (layers K+1..N-1)-->
        logits [V] (last row), present.K+1.. (new rows)

The two decoder graphs split the layers by range, not by phase: each serves the prompt (n rows)
and every decode step (one row), so every weight is stored once. ``past_key_values.i.*`` are the
runtime's fixed caches ``[H_kv, R, d]`` (R = capacity, first ``cache_length`` rows valid), only
read by the graphs; ``present.i.*`` are the new rows ``[H_kv, n, d]`` that the runtime writes into
them at explicit positions. No graph input value sets a shape (TensorRT shape tensors).
"""

from __future__ import annotations

from dataclasses import dataclass

MANIFEST = "manifest.json"
GRAPH_DIR = "graphs"
FORMAT_VERSION = 2

ORT_DISABLED_OPTIMIZERS = "ort_disabled_optimizers"
"""Key of a manifest ``graphs`` entry: ONNX Runtime optimizers its session turns off (quantized graphs)."""


def disabled_optimizers(graphs: dict) -> dict[str, tuple[str, ...]]:
    """``{graph: optimizer names}`` from a manifest's ``graphs`` block, for the ONNX Runtime sessions."""
    return {name: tuple(entry[ORT_DISABLED_OPTIMIZERS]) for name, entry in graphs.items()
            if entry.get(ORT_DISABLED_OPTIMIZERS)}


# Files copied from the checkpoint into an export, so the runtime needs nothing else.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class Tensor:
    """A graph input or output: ``dims`` are ints (fixed) or names of symbolic dimensions.

    ``dtype`` "float" follows the export's ``--dtype`` (float32 or float16); "float32", "int64" and
    "bool" are fixed whatever the export dtype.
    """

    name: str
    dtype: str
    dims: tuple[str | int, ...]


@dataclass(frozen=True)
class Graph:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    doc: str
    custom_ops: tuple[str, ...] = ()  # prunevid ops used (names from prunevid.plugins.ops)

    @property
    def file(self) -> str:
        return f"{GRAPH_DIR}/{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def past_key(i: int) -> str:
    return f"past_key_values.{i}.key"


def past_value(i: int) -> str:
    return f"past_key_values.{i}.value"


def present_key(i: int) -> str:
    return f"present.{i}.key"


def present_value(i: int) -> str:
    return f"present.{i}.value"


def past_names(layers: range) -> list[str]:
    return [n for i in layers for n in (past_key(i), past_value(i))]


def present_names(layers: range) -> list[str]:
    return [n for i in layers for n in (present_key(i), present_value(i))]


def as_past(name: str) -> str:
    """``present.i.key`` -> ``past_key_values.i.key``."""
    return name.replace("present.", "past_key_values.", 1)


@dataclass(frozen=True)
class Geometry:
    """The sizes that fix the graphs of one export."""

    frames: int  # T, PruneConfig.frames, fixed per export (the runtime always samples T frames)
    tokens_per_frame: int  # L
    hidden: int  # C
    image_size: int  # H = W
    num_layers: int
    layer: int  # K, PruneConfig.layer: layers 0..K see every visual token
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def max_visual(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def groups(self) -> int:
        return 2 * self.frames


GEOMETRY_SETTINGS = ("layer", "frames")
"""PruneConfig settings an export fixes in its geometry; the manifest stores them there only."""


def early_layers(g: Geometry) -> range:
    """Layers 0..K: every prompt row goes through them; layer K scores the visual tokens."""
    return range(g.layer + 1)


def late_layers(g: Geometry) -> range:
    """Layers K+1..N-1: only the kept rows go through them."""
    return range(g.layer + 1, g.num_layers)


def _kv(names: list[str], length: str, g: Geometry) -> tuple[Tensor, ...]:
    return tuple(Tensor(n, "float", (g.kv_heads, length, g.head_dim)) for n in names)


def _decoder_inputs(layers: range, g: Geometry) -> tuple[Tensor, ...]:
    return (
        Tensor("hidden", "float", ("new", g.hidden)),
        Tensor("positions", "int64", ("new",)),
        Tensor("cache_length", "int64", ()),
        *_kv(past_names(layers), "cache", g),
    )


def graphs(g: Geometry) -> dict[str, Graph]:
    """Every graph of an export with geometry ``g``, in execution order."""
    early, late = early_layers(g), late_layers(g)
    t, l, c = g.frames, g.tokens_per_frame, g.hidden
    return {
        "encoder": Graph(
            "encoder",
            (Tensor("pixel_values", "float", ("frames", 3, g.image_size, g.image_size)),),
            (Tensor("visual_features", "float", ("frames", l, c)),),
            "CLIP layer -2 without CLS, projector, per-frame average pooling.",
        ),
        "merger": Graph(
            "merger",
            (Tensor("visual_features", "float", (t, l, c)),),
            (
                Tensor("merged_tokens", "float", (t * l, c)),
                Tensor("num_merged", "int64", ()),
                Tensor("group_sizes", "int64", (2 * t,)),
                Tensor("window_sizes", "int64", (t,)),
                Tensor("token_of_cell", "int64", (t, l)),
            ),
            "PruneVid stages A-C; rows past num_merged are zero; groups in token order; "
            "token_of_cell[t, l] = merged row that absorbed frame t's grid cell l.",
            ("PvDpcKnn",),
        ),
        "embed": Graph(
            "embed",
            (Tensor("input_ids", "int64", ("new",)),),
            (Tensor("embeds", "float", ("new", c)),),
            "Token embeddings (the table is stored here only).",
        ),
        "decoder_early": Graph(
            "decoder_early",
            _decoder_inputs(early, g),
            (
                Tensor("hidden_out", "float", ("new", c)),
                Tensor("score_query", "float", (g.heads, "new", g.head_dim)),
                Tensor("score_key", "float", (g.kv_heads, "new", g.head_dim)),
                *_kv(present_names(early), "new", g),
            ),
            "Layers 0..K over the fixed caches (prompt or one decode row); layer K's pre-RoPE q/k.",
        ),
        "score": Graph(
            "score",
            (
                Tensor("score_query", "float", (g.heads, "question", g.head_dim)),
                Tensor("score_key", "float", (g.kv_heads, "seq", g.head_dim)),
            ),
            (Tensor("key_scores", "float32", ("seq",)),),
            "Layer K's non-causal scoring map, max over heads and question rows, per key.",
        ),
        "select": Graph(
            "select",
            (
                Tensor("visual_scores", "float32", ("merged",)),
                Tensor("group_sizes", "int64", (2 * t,)),
                Tensor("image_pos", "int64", ()),
                Tensor("input_ids", "int64", ("text_len",)),
            ),
            (Tensor("keep_index", "int64", ("seq",)), Tensor("num_kept", "int64", ())),
            "floor(alpha * n) per group (PvGroupTopK); all text positions kept; ascending; "
            "fixed size S: the first num_kept entries are kept positions, the rest is the pad value S.",
            ("PvGroupTopK",),
        ),
        "decoder_late": Graph(
            "decoder_late",
            _decoder_inputs(late, g),
            (Tensor("logits", "float", (g.vocab,)), *_kv(present_names(late), "new", g)),
            "Layers K+1..N-1 over the fixed caches at the given positions; logits of the last row.",
        ),
    }


ATTENTION_FORMS = {
    "ort": "prompt through com.microsoft.GroupQueryAttention (fused, ONNX Runtime), decode steps in standard ops",
    "standard": "default-domain ops only (TensorRT 10.3 and 11): one softmax over cache and new rows",
}
"""Forms of the decoder graphs' attention (:mod:`prunevid.exporter.attention`)."""
STORED_ATTENTION = "ort"
"""The form the export's decoder graphs are stored in; the other is derived from it (weights once)."""
TARGET_ATTENTION = {"onnxruntime": "ort", "tensorrt": "standard"}
"""The form each backend family runs (manifest ``attention``)."""
ATTENTION_NODE = "attention."
"""Name prefix of each layer's attention node (``attention.<i>``) in the stored decoder graphs."""

GRAPH_ORDER = ("encoder", "merger", "embed", "decoder_early", "score", "select", "decoder_late")
