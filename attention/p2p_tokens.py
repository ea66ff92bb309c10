"""Prompt-to-Prompt token bookkeeping: which context positions each word of a prompt occupies,
and how the target prompt's tokens map onto the source prompt's.

Everything here works on token *ids* that the caller produced with the CLIP's own tokenizer
(``adapters.p2p`` does it as ComfyUI tokenizes), so it is testable with written-out ids.

Conventions:

- a prompt occupies one context of ``length`` (77) positions: position 0 is the start token,
  the words' tokens follow in order, then the end token and padding;
- a *mapper* is ``M [L_tgt, L_src]``: the edited attention map of target token ``n`` is
  ``sum_w M[n, w] * base[..., w]`` (``base`` = the source's map). P2P writes the transpose;
  every *source* token's mass goes somewhere (columns of ``M`` sum to 1), so the remixed map
  is still a distribution over the target tokens;
- words are the prompt split at whitespace (P2P's ``text.split(" ")``), compared without
  letter case (CLIP lower-cases its input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

CONTEXT_TOKENS = 77


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as the UNet's cross-attention sees it.

    ``words``: the words; ``spans``: ``(start, stop)`` context positions of each word's tokens;
    ``ids``: every content token id in order; ``length``: context positions (77).
    """

    text: str
    words: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    ids: tuple[int, ...]
    length: int = CONTEXT_TOKENS

    @property
    def end(self) -> int:
        """Position of the end token (one past the last word token)."""
        return 1 + len(self.ids)

    def positions(self, word: str) -> list[int]:
        """Context positions of every occurrence of ``word`` (case-insensitive), [] if absent."""
        w = word.strip().lower()
        out: list[int] = []
        for name, (a, b) in zip(self.words, self.spans):
            if name.lower() == w:
                out.extend(range(a, b))
        return out


def prompt_tokens(
    text: str, words: Sequence[str], word_ids: Sequence[Sequence[int]], input_name: str, length: int = CONTEXT_TOKENS
) -> PromptTokens:
    """Lay out ``words`` (with their token ids, start/end tokens excluded) in one context.

    Raises ValueError naming ``input_name`` when the prompt is empty or does not fit in one
    context of ``length`` positions (start + words + end).

    >>> p = prompt_tokens("a red car", ["a", "red", "car"], [[320], [736], [1615]], "prompt")
    >>> p.spans, p.positions("red"), p.end
    (((1, 2), (2, 3), (3, 4)), [2], 4)
    """
    if not words or not any(word_ids):
        raise ValueError(f"{input_name}: the prompt is empty; Prompt-to-Prompt needs the words of both prompts")
    spans, ids, pos = [], [], 1
    for w in word_ids:
        spans.append((pos, pos + len(w)))
        ids.extend(int(i) for i in w)
        pos += len(w)
    if pos + 1 > length:
        raise ValueError(
            f"{input_name}: {len(ids)} tokens do not fit in one {length}-token CLIP context "
            f"(at most {length - 2}); ComfyUI would split the prompt into chunks, which "
            "Prompt-to-Prompt's token maps do not support: shorten the prompt"
        )
    return PromptTokens(text, tuple(words), tuple(spans), tuple(ids), length)


def word_counts_match(src: PromptTokens, tgt: PromptTokens) -> bool:
    return len(src.words) == len(tgt.words)


def auto_mode(src: PromptTokens, tgt: PromptTokens) -> str:
    """``'replace'`` (word swap) when both prompts have the same word count, so that the words
    that differ are swapped one for one; else ``'refine'`` (words added or removed)."""
    return "replace" if word_counts_match(src, tgt) else "refine"


def replace_mapper(src: PromptTokens, tgt: PromptTokens) -> torch.Tensor:
    """Word-swap mapper ``M [L, L]`` (target x source), P2P's ``AttentionReplace``.

    Word k of the source maps onto word k of the target: token by token when their token counts
    are equal, else each of the source word's tokens spreads its mass evenly, ``1/m``, over the
    ``m`` target tokens. Start token, end token and padding follow position by position after
    the words (source padding that falls off the end goes to the last position, so every
    column sums to 1).

    >>> s = prompt_tokens("a cat", ["a", "cat"], [[1], [2]], "s", length=6)
    >>> t = prompt_tokens("a tabby", ["a", "tabby"], [[1], [3, 4]], "t", length=6)
    >>> m = replace_mapper(s, t)
    >>> m[2:4, 2].tolist(), m.sum(0).tolist()
    ([0.5, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    """
    if not word_counts_match(src, tgt):
        raise ValueError(
            f"target_prompt: word swap (mode 'replace') needs the same number of words in both prompts; "
            f"the source has {len(src.words)} ({' '.join(src.words)!r}), the target "
            f"{len(tgt.words)} ({' '.join(tgt.words)!r}). Use mode 'refine' for added words"
        )
    if src.length != tgt.length:
        raise ValueError("source and target contexts must have the same length")
    length = src.length
    m = torch.zeros(length, length)
    m[0, 0] = 1.0
    for (sa, sb), (ta, tb) in zip(src.spans, tgt.spans):
        ns, nt = sb - sa, tb - ta
        if ns == nt:
            for k in range(ns):
                m[ta + k, sa + k] = 1.0
        else:
            m[ta:tb, sa:sb] = 1.0 / nt
    # the end token and padding, position by position after the words
    s, t = src.end, tgt.end
    while s < length:
        m[min(t, length - 1), s] = 1.0
        s, t = s + 1, t + 1
    return m


# -- refine: global alignment of the token sequences -------------------------------------------
_LEFT, _UP, _DIAG = 1, 2, 3  # P2P's traceback codes; ties resolve in this order


def align_tokens(x: Sequence[int], y: Sequence[int], match: int = 1, mismatch: int = -1, gap: int = 0) -> list[int]:
    """Needleman–Wunsch global alignment of ``x`` (source) and ``y`` (target).

    Returns, for every element of ``y``, the index of the ``x`` element it is aligned with, or
    -1 for a target element aligned with a gap (a new token). Scores as P2P's
    ``seq_aligner`` (gap 0, match +1, mismatch -1) and the same tie order (gap in x, then gap
    in y, then diagonal), so a mismatched pair becomes two gaps.

    >>> align_tokens([0, 5, 9], [0, 7, 5, 9])
    [0, -1, 1, 2]
    """
    nx, ny = len(x), len(y)
    score = [[0] * (ny + 1) for _ in range(nx + 1)]
    trace = [[0] * (ny + 1) for _ in range(nx + 1)]
    for j in range(1, ny + 1):
        score[0][j], trace[0][j] = j * gap, _LEFT
    for i in range(1, nx + 1):
        score[i][0], trace[i][0] = i * gap, _UP
    for i in range(1, nx + 1):
        for j in range(1, ny + 1):
            left = score[i][j - 1] + gap
            up = score[i - 1][j] + gap
            diag = score[i - 1][j - 1] + (match if x[i - 1] == y[j - 1] else mismatch)
            best = max(left, up, diag)
            score[i][j] = best
            trace[i][j] = _LEFT if best == left else _UP if best == up else _DIAG
    out: list[int] = []
    i, j = nx, ny
    while i > 0 or j > 0:
        code = trace[i][j]
        if code == _DIAG:
            i, j = i - 1, j - 1
            out.append(i)
        elif code == _LEFT:
            j -= 1
            out.append(-1)
        else:
            i -= 1
    out.reverse()
    return out


def refine_mapper(
    src: PromptTokens, tgt: PromptTokens, start_id: int = -1, end_id: int = -2
) -> tuple[torch.Tensor, torch.Tensor]:
    """P2P's ``AttentionRefine`` mapping: ``(index [L] int64, alpha [L] float)``.

    The token sequences (start + ids + end) are globally aligned; target position n takes the
    source map at ``index[n]`` with weight ``alpha[n]`` = 1, and a new target token (aligned
    with a gap) keeps its own map (``alpha`` 0). Positions after the target's end token map to
    the same position (padding), as P2P.

    >>> s = prompt_tokens("a cat", ["a", "cat"], [[1], [2]], "s", length=6)
    >>> t = prompt_tokens("a red cat", ["a", "red", "cat"], [[1], [3], [2]], "t", length=6)
    >>> idx, alpha = refine_mapper(s, t)
    >>> idx.tolist(), alpha.tolist()
    ([0, 1, 0, 2, 3, 5], [1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    """
    x = [start_id, *src.ids, end_id]
    y = [start_id, *tgt.ids, end_id]
    aligned = align_tokens(x, y)
    length = tgt.length
    index = torch.arange(length, dtype=torch.long)
    alpha = torch.ones(length)
    for n, w in enumerate(aligned):
        index[n] = w if w >= 0 else 0  # unused where alpha is 0
        alpha[n] = 1.0 if w >= 0 else 0.0
    return index, alpha


def mapper_from_index(index: torch.Tensor, alpha: torch.Tensor, length: int) -> torch.Tensor:
    """The refine mapping written as a matrix ``M [L, L]`` with ``M[n, index[n]] = alpha[n]``
    (new tokens have an empty row)."""
    m = torch.zeros(length, length)
    m[torch.arange(length), index] = alpha
    return m


# -- user word lists ---------------------------------------------------------------------------
def parse_words(text: str) -> list[str]:
    """``'car, road'`` or ``'car road'`` → ``['car', 'road']``."""
    return [w for part in (text or "").replace(";", ",").split(",") for w in part.split() if w]


def word_positions(prompt: PromptTokens, words: Sequence[str], input_name: str, prompt_name: str) -> list[int]:
    """Positions of all ``words`` in ``prompt``; ValueError naming the input for a missing word."""
    out: list[int] = []
    for w in words:
        pos = prompt.positions(w)
        if not pos:
            raise ValueError(
                f"{input_name}: '{w}' is not a word of the {prompt_name} {prompt.text!r} "
                f"(its words: {', '.join(prompt.words)})"
            )
        out.extend(pos)
    return sorted(set(out))


def parse_word_values(text: str, input_name: str, lo: float, hi: float) -> list[tuple[str, float]]:
    """``'fluffy:3, red:2'`` → ``[('fluffy', 3.0), ('red', 2.0)]``; values in ``[lo, hi]``."""
    out = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        word, sep, value = part.rpartition(":")
        try:
            v = float(value)
        except ValueError:
            v = None
        if not sep or not word.strip() or v is None:
            raise ValueError(f"{input_name}: '{part}' is not like 'word:2.5'")
        if not lo <= v <= hi:
            raise ValueError(f"{input_name}: {word.strip()!r} has {v}, outside {lo}..{hi}")
        out.append((word.strip(), v))
    return out


def equalizer(prompt: PromptTokens, scales: Sequence[tuple[str, float]], input_name: str) -> torch.Tensor:
    """P2P's reweighting equalizer ``[L]``: 1 everywhere, ``scale`` at the tokens of each word
    of ``prompt`` (the target)."""
    eq = torch.ones(prompt.length)
    for word, scale in scales:
        eq[word_positions(prompt, [word], input_name, "target prompt")] = scale
    return eq


# -- the time/word alpha schedule ----------------------------------------------------------------
Bounds = tuple[float, float]


def parse_steps_spec(text: str, input_name: str) -> dict[str, Bounds]:
    """``'0.2'``, ``'default:0.8, motorcycle:0.4'`` or ``'default:0.8, red:0.1-0.6'`` → a dict of
    step-fraction bounds ``(start, end)`` keyed by word, ``'default'`` for every token."""
    text = (text or "").strip()
    if not text:
        raise ValueError(f"{input_name}: empty; give a fraction such as 0.2 or 'default:0.8, word:0.4'")
    out: dict[str, Bounds] = {}
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        word, sep, value = part.rpartition(":")
        word = word.strip().lower() if sep else "default"
        value = value.strip()
        try:
            lo, dash, hi = value.partition("-")
            bounds = (float(lo), float(hi)) if dash else (0.0, float(value))
        except ValueError:
            raise ValueError(f"{input_name}: '{part}' is not like '0.8', 'word:0.4' or 'word:0.1-0.6'") from None
        if not (0.0 <= bounds[0] <= bounds[1] <= 1.0):
            raise ValueError(f"{input_name}: '{part}' must give fractions 0 <= start <= end <= 1")
        if word in out:
            raise ValueError(f"{input_name}: '{word}' is given twice")
        out[word] = bounds
    return out


def time_word_alpha(
    num_steps: int, length: int, default: Bounds, words: Sequence[tuple[Sequence[int], Bounds]]
) -> torch.Tensor:
    """Cross-attention replacement weight ``alpha [num_steps + 1, L]`` per step and target token.

    P2P's ``get_time_words_attention_alpha`` for one target prompt: a token is replaced (1) at
    steps ``int(start * (num_steps + 1)) <= i < int(end * (num_steps + 1))`` of its bounds, else
    0; ``default`` applies to every token, then each ``(positions, bounds)`` override to its
    tokens.

    >>> time_word_alpha(4, 3, (0.0, 0.5), [([2], (0.0, 1.0))])[:, 1:].tolist()
    [[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    """
    rows = num_steps + 1
    alpha = torch.zeros(rows, length)

    def fill(cols, bounds: Bounds):
        start, end = int(bounds[0] * rows), int(bounds[1] * rows)
        alpha[:, cols] = 0.0
        alpha[start:end, cols] = 1.0

    fill(slice(None), default)
    for positions, bounds in words:
        if len(positions):
            fill(list(positions), bounds)
    return alpha


def step_window(num_steps: int, fraction: float | Bounds) -> tuple[int, int]:
    """P2P's self-attention replacement window ``[int(s0 * S), int(s1 * S))``."""
    lo, hi = (0.0, fraction) if isinstance(fraction, (int, float)) else fraction
    return int(num_steps * lo), int(num_steps * hi)
