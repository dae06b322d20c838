"""Stage D: the scoring map, per-token importance and the grouped floor(alpha * n) selection."""

import math

import torch

from prunevid.pruning import (
    keep_count,
    scoring_attention,
    select_visual_tokens,
    visual_token_scores,
)
from prunevid.reference import question_scores


def test_scoring_map_is_non_causal_softmax_over_all_keys():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 5, 4, generator=gen), torch.randn(2, 5, 4, generator=gen)
    attn = scoring_attention(q, k)
    manual = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    assert torch.allclose(attn, manual, atol=1e-7)
    upper = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert torch.all(attn[:, upper] > 0)  # rows see the keys after them
    assert torch.allclose(attn.sum(-1), torch.ones(2, 5))


def test_scoring_map_shares_key_heads_for_gqa():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 3, 2, generator=gen), torch.randn(2, 3, 2, generator=gen)
    attn = scoring_attention(q, k)
    assert torch.allclose(attn[1], scoring_attention(q[1:2], k[0:1])[0])
    assert torch.allclose(attn[2], scoring_attention(q[2:3], k[1:2])[0])


def test_visual_scores_max_over_heads_then_question_rows():
    attn = torch.zeros(2, 6, 6)
    # visual block = positions 1..3, queries = rows 4 and 5
    attn[0, 4, 1], attn[1, 5, 1] = 0.3, 0.5
    attn[1, 4, 2] = 0.7
    attn[0, 0, 3] = 0.9  # a row before the block never counts
    attn[0, 2, 3] = 0.9  # nor a row inside the block
    assert visual_token_scores(attn, 1, 4).tolist() == [0.5, 0.699999988079071, 0.0]


def test_question_rows_only_equals_full_map():
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(3, 20, 8, generator=gen), torch.randn(3, 20, 8, generator=gen)
    full = visual_token_scores(scoring_attention(q, k), 4, 15)
    assert torch.allclose(question_scores(q, k, 4, 15), full, atol=1e-7)


def test_floor_per_group_small_groups_lose_everything():
    assert [keep_count(0.4, n) for n in (1, 2, 3, 5, 7, 15)] == [0, 0, 1, 2, 2, 6]
    # one segment of 2 frames: a static group of 2 (floor(0.8) = 0, loses everything even though it
    # holds the best scores), then two frames of 4 dynamic tokens (floor(1.6) = 1 each)
    kept = select_visual_tokens(torch.tensor([9.0, 8, 1, 5, 7, 2, 3, 4, 6, 0]), [2], [8], [2], 0.4)
    assert kept.tolist() == [4, 8]
    # the retained count is the sum of per-group floors, not floor(alpha * M)
    assert select_visual_tokens(torch.rand(10), [2], [8], [2], 0.4).numel() == 2 != int(0.4 * 10)


def test_selection_is_top_per_group_sorted_ascending():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2, 0.8, 0.3, 0.6, 0.4, 0.0])
    # segment 0: static 5 -> keep 2; two frames of 0 dynamic; segment 1: static 0, one frame of 5 -> keep 2
    kept = select_visual_tokens(scores, [5, 0], [0, 5], [2, 1], 0.4)
    assert kept.tolist() == [1, 3, 5, 7]


def test_exact_ties_go_to_the_lower_index():
    kept = select_visual_tokens(torch.ones(5), [5], [0], [1], 0.4)
    assert kept.tolist() == [0, 1]


def test_alpha_one_keeps_everything():
    scores = torch.rand(12)
    assert select_visual_tokens(scores, [2, 2], [4, 4], [2, 2], 1.0).tolist() == list(range(12))
