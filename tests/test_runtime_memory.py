"""Resident memory of the runtime: session options, heap trimming after loading and after long calls,
and the KV cache as one block (issue 7: resident <= 1.15 x weights + KV after warm-up, measured by
benchmarks/bench_runtime.py; these tests pin the mechanisms that measurement depends on)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from prunevid import spec
from prunevid.runtime.backend import OrtBackend, heap_trimmer
from prunevid.runtime.chain import MAPPED_BYTES, KVCache, zeros


def paths(export_dir):
    return {n: export_dir / spec.GRAPH_DIR / f"{n}.onnx" for n in spec.GRAPH_ORDER}


class Counter:
    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1


def config_entry(opts, key: str) -> str | None:
    try:
        return opts.get_session_config_entry(key)
    except RuntimeError:  # not set
        return None


def encoder_feeds(export_dir):
    from prunevid.runtime.artifact import open_artifact

    g = open_artifact(export_dir).geometry
    return {"pixel_values": np.zeros((g.frames, 3, g.image_size, g.image_size), np.float32)}


def test_every_session_runs_without_arena_and_with_prepacked_weights(tiny_export):
    backend = OrtBackend(paths(tiny_export), threads=1)
    backend.warm_up()
    assert set(backend.sessions) == set(spec.GRAPH_ORDER)  # one session per graph: every weight loaded once
    for sess in backend.sessions.values():
        opts = sess.get_session_options()
        assert opts.enable_cpu_mem_arena is False
        # prepacking stays on: the packed MatMul weights replace the originals (no second copy),
        # and the decode step without them was measured 1.5-2.6x slower
        assert config_entry(opts, "session.disable_prepacking") in (None, "0")


def test_heap_is_trimmed_after_loading_and_per_graph_time(tiny_export):
    backend = OrtBackend(paths(tiny_export), trim_after_ms=float("inf"))
    backend.trim = counter = Counter()
    backend.warm_up()
    assert counter.n == len(spec.GRAPH_ORDER)  # once per session created
    feeds = encoder_feeds(tiny_export)
    backend.run("encoder", feeds)
    assert counter.n == len(spec.GRAPH_ORDER)  # less graph time than the period: no trim
    backend.trim_after_ms = 0.0
    backend.run("encoder", feeds)
    backend.run("encoder", feeds)
    assert counter.n == len(spec.GRAPH_ORDER) + 2 and backend.trims == counter.n


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_heap_trimmer_is_glibc_malloc_trim():
    trim = heap_trimmer()
    assert trim is not None
    assert trim() in (0, 1)  # 1: memory was released, 0: none could be


def test_kv_cache_layers_are_contiguous_views_of_one_block():
    g = spec.Geometry(frames=2, tokens_per_frame=4, hidden=8, image_size=1, num_layers=3, layer=1, heads=4,
                      kv_heads=2, head_dim=4, vocab=10)
    cache = KVCache(g, rows=5, dtype=np.float32)
    assert cache.block.shape == (6, 2, 5, 4)
    names = spec.past_names(range(3))
    for i, name in enumerate(names):
        buf = cache.buffers[name]
        assert buf.shape == (2, 5, 4) and buf.flags["C_CONTIGUOUS"] and np.shares_memory(buf, cache.block)
    rows = [np.full((2, 2, 4), i + 1, np.float32) for i in range(len(names))]
    cache.write(rows, range(3))
    cache.advance(2)
    cache.write([r[:, :1] * 10 for r in rows], range(3))
    for i in range(len(names)):
        np.testing.assert_array_equal(cache.block[i, :, :2], i + 1)
        np.testing.assert_array_equal(cache.block[i, :, 2], 10 * (i + 1))
        np.testing.assert_array_equal(cache.block[i, :, 3:], 0)


def test_large_cache_blocks_are_anonymous_mappings_of_zero_pages():
    import mmap

    big = zeros((4, 3, MAPPED_BYTES // 8), np.float32)  # 1.5 x MAPPED_BYTES
    owner = big
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert isinstance(owner.obj if isinstance(owner, memoryview) else owner, mmap.mmap)  # not the heap
    assert big.flags["C_CONTIGUOUS"] and big.flags["WRITEABLE"] and not big.any()
    big[1, 2, 3] = 5.0
    assert big.sum() == 5.0
    small = zeros((2, 3), np.float16)
    assert small.dtype == np.float16 and not small.any() and small.base is None


def test_prefill_and_decode_release_the_heap_once_their_activations_are_freed(tiny_export, scene_cut_clip):
    """The prompt's freed outputs (new K/V rows of every layer, hidden states) go back to the OS
    before the first decode step: the runner's release() runs once after the last prefill graph,
    when none of those outputs is alive any more (only the logits, kept in the state); and once
    after the last decode step."""
    import gc
    import weakref

    from prunevid.runtime.pipeline import RuntimePipeline

    runtime = RuntimePipeline(tiny_export, threads=1)
    backend = runtime.backend
    events: list = []

    class Spy:
        def run(self, graph, feeds):
            out = backend.run(graph, feeds)
            events.append((graph, {k: weakref.ref(v) for k, v in out.items() if isinstance(v, np.ndarray)}))
            return out

        def release(self):
            gc.collect()  # only what a reference cycle would hold; plain references are counted
            alive = [(g, k) for g, refs in events if g.startswith("decoder") for k, r in refs.items()
                     if r() is not None and k != "logits"]
            events.append(("release", alive))
            backend.release()

    runtime.chain.runner = Spy()
    answer = runtime.run(scene_cut_clip, "What moves?", max_new_tokens=2)
    names = [e[0] for e in events]
    first_step = names.index("embed", names.index("decoder_late"))  # the decode step's own embed
    assert names[:first_step].count("release") == 1 and names[first_step - 1] == "release"
    assert events[first_step - 1][1] == []  # no decoder output but the logits alive at that point
    # once more when the answer's decode ends, not per step (the backend trims by graph time)
    assert names.count("release") == 2 and names[-1] == "release" and names[-2] == "decoder_late"
    assert len(answer.token_ids) == 2


def test_an_answer_returns_the_heap_after_prefill_after_decode_and_after_the_answer(tiny_export, scene_cut_clip):
    """With the graph-time trims off, exactly three trims per answer of run(): after the prompt, after
    the last decode step, and once run() has dropped the answer's pixels; generate() alone (the
    server's path, whose caller holds the pixels) makes the first two."""
    from prunevid.runtime.pipeline import RuntimePipeline

    runtime = RuntimePipeline(tiny_export, threads=1)
    runtime.backend.trim_after_ms = float("inf")
    runtime.backend.trim = counter = Counter()
    runtime.run(scene_cut_clip, "What moves?", max_new_tokens=3)
    assert counter.n == 3
    pixels = runtime.prepare(scene_cut_clip)
    runtime.generate(pixels, "What moves?", max_new_tokens=3)
    assert counter.n == 5
