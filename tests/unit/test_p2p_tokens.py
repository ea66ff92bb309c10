"""Prompt-to-Prompt token bookkeeping on written-out token ids (the host tests use the real
SD1 tokenizer)."""

import random

import pytest
import torch

from comfyui_videoedit.attention.p2p_tokens import (
    align_tokens,
    auto_mode,
    equalizer,
    mapper_from_index,
    parse_steps_spec,
    parse_word_values,
    parse_words,
    prompt_tokens,
    refine_mapper,
    replace_mapper,
    step_window,
    time_word_alpha,
)

IDS = {
    "a": [320],
    "cat": [2368],
    "riding": [6765],
    "bike": [3701],
    "fluffy": [31333],
    "red": [736],
    "man": [786],
    "motorcycle": [10297, 9985],
    "spider-man": [7622, 268, 786],
    "on": [525],
}


def tokens(text, length=77, name="prompt"):
    words = text.split()
    return prompt_tokens(text, words, [IDS[w.lower()] for w in words], name, length)


def test_refine_alignment_of_added_words_gives_the_expected_mapper_and_alpha():
    src, tgt = tokens("a cat riding a bike"), tokens("a fluffy cat riding a red bike")
    index, alpha = refine_mapper(src, tgt)
    # target positions: 0 start, 1 a, 2 fluffy, 3 cat, 4 riding, 5 a, 6 red, 7 bike, 8 end, 9.. padding
    # source positions: 0 start, 1 a, 2 cat, 3 riding, 4 a, 5 bike, 6 end, 7.. padding
    expected_alpha = torch.ones(77)
    expected_alpha[[2, 6]] = 0
    assert torch.equal(alpha, expected_alpha)
    kept = [n for n in range(77) if n not in (2, 6)]
    expected = {0: 0, 1: 1, 3: 2, 4: 3, 5: 4, 7: 5, 8: 6}
    expected.update({n: n for n in range(9, 77)})  # padding after the target's end: same position (P2P)
    assert {n: int(index[n]) for n in kept} == expected
    m = mapper_from_index(index, alpha, 77)
    assert torch.equal(m.sum(1), alpha)  # one source token per kept target token, none for new ones


def test_removed_words_align_too():
    src, tgt = tokens("a fluffy cat riding a red bike"), tokens("a cat riding a bike")
    index, alpha = refine_mapper(src, tgt)
    assert alpha[:7].tolist() == [1.0] * 7
    assert index[:7].tolist() == [0, 1, 3, 4, 5, 7, 8]  # start, a, cat, riding, a, bike, end


def _lcs(x, y):
    t = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            t[i][j] = t[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(t[i - 1][j], t[i][j - 1])
    return t[-1][-1]


def test_alignment_is_a_longest_common_subsequence():
    """With gap 0 and mismatch -1 the best global alignment matches a longest common subsequence."""
    rng = random.Random(3)
    for _ in range(40):
        x = [rng.randrange(5) for _ in range(rng.randrange(1, 12))]
        y = [rng.randrange(5) for _ in range(rng.randrange(1, 12))]
        out = align_tokens(x, y)
        assert len(out) == len(y)
        pairs = [(i, j) for j, i in enumerate(out) if i >= 0]
        assert all(x[i] == y[j] for i, j in pairs), "only equal tokens are aligned"
        assert all(a[0] < b[0] for a, b in zip(pairs, pairs[1:])), "alignment keeps the order"
        assert len(pairs) == _lcs(x, y)


def test_replace_mapper_columns_sum_to_one_also_for_multi_token_words():
    for s, t in [
        ("a man riding a bike", "a man riding a motorcycle"),
        ("a man riding a motorcycle", "a man riding a bike"),
        ("a man riding a bike", "a Spider-Man riding a bike"),
        ("a cat on a bike", "a man on a bike"),
    ]:
        m = replace_mapper(tokens(s), tokens(t))
        assert torch.allclose(m.sum(0), torch.ones(77)), (s, t)


def test_replace_mapper_spreads_a_word_over_its_replacement_tokens():
    m = replace_mapper(tokens("a man riding a bike"), tokens("a man riding a motorcycle"))
    # bike (source 5) -> motorcycle (target 5, 6), weight 1/2 each; end token 6 -> 7
    assert m[5, 5] == m[6, 5] == 0.5
    assert m[7, 6] == 1 and m[1, 1] == m[2, 2] == m[3, 3] == m[4, 4] == m[0, 0] == 1
    m = replace_mapper(tokens("a Spider-Man riding a bike"), tokens("a man riding a bike"))
    # three source tokens -> one target token, weight 1/1 each
    assert m[2, 2] == m[2, 3] == m[2, 4] == 1.0 and m[3, 5] == 1.0
    m = replace_mapper(tokens("a cat on a bike"), tokens("a man on a bike"))
    assert torch.equal(m, torch.eye(77))  # one token each: position by position


def test_word_swap_refuses_different_word_counts_and_auto_picks_the_mode():
    with pytest.raises(ValueError, match="target_prompt: word swap"):
        replace_mapper(tokens("a cat riding a bike"), tokens("a fluffy cat riding a bike"))
    assert auto_mode(tokens("a cat riding a bike"), tokens("a man riding a motorcycle")) == "replace"
    assert auto_mode(tokens("a cat riding a bike"), tokens("a fluffy cat riding a bike")) == "refine"


def test_empty_and_too_long_prompts_are_refused_naming_the_input():
    with pytest.raises(ValueError, match="source_prompt: the prompt is empty"):
        prompt_tokens("", [], [], "source_prompt")
    words = ["cat"] * 76
    with pytest.raises(ValueError, match="target_prompt: 76 tokens do not fit"):
        prompt_tokens(" ".join(words), words, [[2368]] * 76, "target_prompt")
    assert prompt_tokens(" ".join(words[:75]), words[:75], [[2368]] * 75, "t").end == 76


def test_reweight_equalizer_scales_exactly_the_chosen_tokens():
    tgt = tokens("a fluffy cat riding a red bike")
    eq = equalizer(tgt, parse_word_values("fluffy:3, red:2", "reweight", 0, 10), "reweight")
    expected = torch.ones(77)
    expected[2], expected[6] = 3.0, 2.0
    assert torch.equal(eq, expected)
    with pytest.raises(ValueError, match="reweight: 'dog' is not a word of the target prompt"):
        equalizer(tgt, [("dog", 2.0)], "reweight")
    with pytest.raises(ValueError, match="reweight: 'red' is not like"):
        parse_word_values("red", "reweight", 0, 10)


def test_positions_cover_every_occurrence_and_ignore_case():
    p = tokens("a man riding a motorcycle")
    assert p.positions("A") == [1, 4] and p.positions("motorcycle") == [5, 6] and p.positions("dog") == []
    assert parse_words("car, road  tree") == ["car", "road", "tree"]


def _official_alpha(num_steps, bounds_default, words, length):
    """P2P's get_time_words_attention_alpha for one target prompt, written out loop by loop."""
    rows = num_steps + 1
    alpha = [[0.0] * length for _ in range(rows)]

    def update(bounds, cols):
        if isinstance(bounds, float):
            bounds = (0.0, bounds)
        start, end = int(bounds[0] * rows), int(bounds[1] * rows)
        for i in range(rows):
            for c in cols:
                alpha[i][c] = 1.0 if start <= i < end else 0.0

    update(bounds_default, range(length))
    for cols, bounds in words:
        update(bounds, cols)
    return torch.tensor(alpha)


@pytest.mark.parametrize(
    "steps,spec,word_cols",
    [
        (50, "0.2", {}),
        (50, "0.8", {}),
        (50, "default:0.8, motorcycle:0.4", {"motorcycle": [5, 6]}),
        (10, "motorcycle:0.1-0.6", {"motorcycle": [5, 6]}),
        (4, "default:0.5, man:1", {"man": [2]}),
    ],
)
def test_alpha_schedule_matches_the_official_semantics(steps, spec, word_cols):
    parsed = parse_steps_spec(spec, "cross_replace_steps")
    default = parsed.pop("default", (0.0, 1.0))
    words = [(word_cols[w], b) for w, b in parsed.items()]
    ours = time_word_alpha(steps, 12, default, words)
    assert torch.equal(ours, _official_alpha(steps, default, words, 12))


def test_alpha_schedule_written_out():
    a = time_word_alpha(50, 4, (0.0, 0.8), [([2], (0.0, 0.4))])
    assert a.shape == (51, 4)
    assert a[:40, 0].eq(1).all() and a[40:, 0].eq(0).all()  # int(0.8 * 51) = 40
    assert a[:20, 2].eq(1).all() and a[20:, 2].eq(0).all()  # int(0.4 * 51) = 20
    assert step_window(50, 0.5) == (0, 25)


def test_steps_spec_errors_name_the_input():
    for bad in ("", "abc", "word:1.5", "word:0.6-0.2", "a:0.1, a:0.2"):
        with pytest.raises(ValueError, match="cross_replace_steps"):
            parse_steps_spec(bad, "cross_replace_steps")
    assert parse_steps_spec("Spider-Man:0.3", "x") == {"spider-man": (0.0, 0.3)}
