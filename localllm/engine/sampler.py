"""Turns one step's logits into one token per sequence: penalties and masks, then a greedy or random pick."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from localllm.engine.batch import to_device
from localllm.engine.events import SampledToken
from localllm.kernels.sample_ref import preferences
from localllm.sampling_params import SamplingParams

# A row with top-p but no top-k looks for its nucleus among this many best tokens first: a full
# vocabulary sort costs about a second for 256 x 150k on CPU, and is only needed when the nucleus
# turns out wider than this.
NUCLEUS_WINDOW = 1024
# float32 cumulative sums are off by about 1e-7 per term; without some slack a nucleus that reaches
# top_p exactly (0.3 + 0.3 for top_p 0.6) could take in one token more.
TOP_P_SLACK = 1e-6


@dataclass
class SamplingRow:
    """What the sampler knows about one sequence this step."""
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    # Seeded per sequence when params.seed is set, on the logits' device; None = torch's global RNG.
    generator: torch.Generator | None


class Sampler:
    def __init__(self, eos_token_ids: set[int]):
        self.eos_token_ids = set(eos_token_ids)

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> list[SampledToken]:
        """Picks one token per row of logits [B, V]; the caller's tensor is left untouched."""
        if logits.shape[0] != len(rows):
            raise ValueError(f"{logits.shape[0]} rows of logits for {len(rows)} sampling rows")
        logits = self.penalised_and_masked(logits, rows)
        token_ids = _choose_tokens(logits, rows)
        return sampled_tokens(logits, rows, token_ids)

    @staticmethod
    def token_ids(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """The chosen token ids, left on the logits' device, for rows that need neither penalties nor logprobs
        (see needs_host): with a GPU, the host goes on without waiting for them (except for top-p rows whose
        nucleus may be wider than NUCLEUS_WINDOW, which look at the result). A logit_bias needs no history, so
        it is added here too."""
        if any(row.params.logit_bias for row in rows):
            logits = logits.to(torch.float32, copy=True)
            add_logit_bias(logits, rows)
        return _choose_tokens(logits, rows)

    @staticmethod
    def reads_history(params: SamplingParams) -> bool:
        """Whether sampling this request looks at its earlier tokens (penalties, min_tokens)."""
        return (params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
                or params.min_tokens > 0)

    @staticmethod
    def needs_host(params: SamplingParams) -> bool:
        """Whether sampling this request reads its token history or returns logprobs to the host."""
        return Sampler.reads_history(params) or params.logprobs is not None

    def penalised_and_masked(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        repetition = [i for i, row in enumerate(rows) if row.params.repetition_penalty != 1.0]
        additive = [i for i, row in enumerate(rows)
                    if row.params.presence_penalty != 0.0 or row.params.frequency_penalty != 0.0]
        banned_rows, banned_tokens = self._tokens_banned_by_min_tokens(rows)
        biased = any(row.params.logit_bias for row in rows)
        if not (repetition or additive or banned_rows or biased):
            return logits.float()
        logits = logits.to(torch.float32, copy=True)
        if repetition:
            _apply_repetition_penalty(logits, repetition, [rows[i] for i in repetition])
        if additive:
            _apply_presence_and_frequency_penalties(logits, additive, [rows[i] for i in additive])
        if biased:
            add_logit_bias(logits, rows)
        if banned_rows:
            logits[banned_rows, banned_tokens] = float("-inf")
        return logits

    def _tokens_banned_by_min_tokens(self, rows: list[SamplingRow]) -> tuple[list[int], list[int]]:
        """(row, token) pairs of every token that would end a sequence still short of min_tokens."""
        banned_rows: list[int] = []
        banned_tokens: list[int] = []
        for i, row in enumerate(rows):
            if len(row.output_token_ids) >= row.params.min_tokens:
                continue
            # With ignore_eos, EOS does not end the sequence, so it needs no masking (as in vLLM).
            enders = set(row.params.stop_token_ids)
            if not row.params.ignore_eos:
                enders |= self.eos_token_ids
            banned_rows += [i] * len(enders)
            banned_tokens += enders
        return banned_rows, banned_tokens


def _distinct_occurrences(token_lists: list[list[int]], vocab_size: int, device: torch.device
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(list index, token id, count) for every distinct token of every list.

    Touching only the tokens that occur keeps penalties cheap next to a dense [B, V] pass.
    """
    lengths = torch.tensor([len(tokens) for tokens in token_lists], device=device)
    list_index = torch.repeat_interleave(torch.arange(len(token_lists), device=device), lengths)
    token_ids = torch.tensor(list(itertools.chain.from_iterable(token_lists)), dtype=torch.long, device=device)
    keys, counts = torch.unique(list_index * vocab_size + token_ids, return_counts=True)
    return keys // vocab_size, keys % vocab_size, counts


def _apply_repetition_penalty(logits: torch.Tensor, row_index: list[int], rows: list[SamplingRow]) -> None:
    """HF semantics: a token seen in the prompt or output has a positive logit divided by the
    penalty and a negative one multiplied, so a penalty > 1 always makes it less likely."""
    seen = [row.prompt_token_ids + row.output_token_ids for row in rows]
    which, token_ids, _ = _distinct_occurrences(seen, logits.shape[1], logits.device)
    at = (torch.tensor(row_index, device=logits.device)[which], token_ids)
    penalty = torch.tensor([row.params.repetition_penalty for row in rows], device=logits.device)[which]
    values = logits[at]
    logits[at] = torch.where(values > 0, values / penalty, values * penalty)


def _apply_presence_and_frequency_penalties(logits: torch.Tensor, row_index: list[int],
                                            rows: list[SamplingRow]) -> None:
    """OpenAI semantics, over output tokens only: logit -= presence * (count > 0) + frequency * count."""
    outputs = [row.output_token_ids for row in rows]
    which, token_ids, counts = _distinct_occurrences(outputs, logits.shape[1], logits.device)
    at = (torch.tensor(row_index, device=logits.device)[which], token_ids)
    presence = torch.tensor([row.params.presence_penalty for row in rows], device=logits.device)[which]
    frequency = torch.tensor([row.params.frequency_penalty for row in rows], device=logits.device)[which]
    logits[at] -= presence + frequency * counts


def add_logit_bias(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    """OpenAI's logit_bias, in place on float32 logits [B, V]: each row's biases added to their tokens' logits, by
    one indexed add from one copy of (row, token, bias) triples, queued without waiting for the device (float64
    holds the ids exactly)."""
    triples = [(i, token, bias) for i, row in enumerate(rows) for token, bias in row.params.logit_bias.items()]
    which, tokens, biases = to_device(torch.tensor(triples, dtype=torch.float64).T.contiguous(), logits.device)
    logits.index_put_((which.long(), tokens.long()), biases.float(), accumulate=True)


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """The best token of each row (the first one where nothing is finite: argmax alone would pick a NaN). On a GPU
    by pieces of the rows in parallel (kernels.sample.greedy_tokens), the logits read in their own dtype."""
    if logits.is_cuda and logits.stride(-1) == 1:
        from localllm.kernels.sample import greedy_tokens as greedy_on_gpu

        return greedy_on_gpu(logits)
    return preferences(logits).argmax(-1)


def _choose_tokens(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """logits: any float dtype; they are compared and transformed in float32."""
    greedy = [i for i, row in enumerate(rows) if row.params.greedy]
    sampled = [i for i, row in enumerate(rows) if not row.params.greedy]
    if not sampled:
        return greedy_tokens(logits)
    if logits.is_cuda and all(_by_temperature_alone(row.params) for row in rows):
        # one launch reading the logits at most twice, where softmax + cumsum + search pass over them ~10 times
        from localllm.kernels.sample import sample_tokens

        temperature = to_device(torch.tensor([0.0 if row.params.greedy else row.params.temperature for row in rows]),
                                logits.device)
        return sample_tokens(logits.contiguous(), temperature, uniforms_of(rows, logits.device))
    logits = logits.float()
    if not greedy:
        return _sample(logits, rows)
    token_ids = torch.empty(len(rows), dtype=torch.long, device=logits.device)
    token_ids[greedy] = greedy_tokens(logits[greedy])
    token_ids[sampled] = _sample(logits[sampled], [rows[i] for i in sampled])
    return token_ids


def _by_temperature_alone(params: SamplingParams) -> bool:
    """Whether a row's token is chosen from the whole vocabulary by temperature (or greedily), as
    kernels.sample_ref.sample_tokens_ref chooses it: no top-k, top-p or min-p."""
    return params.top_k <= 0 and params.top_p >= 1.0 and params.min_p <= 0.0


def _sample(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p, then one random draw per row.

    Every step of a row's computation depends on that row alone (rows are grouped by how many
    candidates they keep, never padded to another row's width), and its one uniform draw comes
    from its own generator, so a seeded row gets the same tokens whatever else is in the batch.
    """
    device = logits.device
    scaled = _scaled(logits, rows)
    uniforms = uniforms_of(rows, device)
    groups = _groups_by_candidate_window(rows, logits.shape[1])
    if len(groups) == 1:   # the usual case; indexing by a list of rows would be a blocking host-to-device copy
        return _sample_group(scaled, rows, uniforms, *next(iter(groups)))
    token_ids = torch.empty(len(rows), dtype=torch.long, device=device)
    for (width, top_k), members in groups.items():
        token_ids[members] = _sample_group(_rows_of(scaled, members), [rows[i] for i in members], uniforms[members],
                                           width, top_k)
    return token_ids


def _sample_group(scaled: torch.Tensor, rows: list[SamplingRow], uniforms: torch.Tensor, width: int | None,
                  top_k: bool) -> torch.Tensor:
    if width is None:
        return _sample_full_vocabulary(scaled, rows, uniforms)
    if top_k:
        return _sample_in_window(scaled, rows, uniforms, width, renormalise_in_window=True)[0]
    return _sample_nucleus(scaled, rows, uniforms, width)


def _scaled(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    temperature = to_device(torch.tensor([row.params.temperature for row in rows]), logits.device)
    return _with_a_candidate_in_every_row(preferences(logits / temperature[:, None]))


def _with_a_candidate_in_every_row(scaled: torch.Tensor) -> torch.Tensor:
    """A row where every token is impossible (-inf: all banned, or NaN from the model) has no distribution; it
    takes its first token, as greedy sampling does, rather than NaN probabilities and an index past the end.
    Done in place on the device, so the host does not wait to learn which rows those are."""
    nothing_left = scaled.amax(-1, keepdim=True) == -math.inf
    scaled[:, :1] = scaled[:, :1].masked_fill(nothing_left, 0.0)
    return scaled


def uniforms_of(rows: list[SamplingRow], device: torch.device) -> torch.Tensor:
    """One uniform per row; a batch without seeded rows draws them in one launch instead of one per row."""
    if all(row.generator is None for row in rows):
        return torch.rand(len(rows), device=device)
    return torch.cat([torch.rand(1, generator=row.generator, device=device) for row in rows])


def _rows_of(tensor: torch.Tensor, index: list[int]) -> torch.Tensor:
    """tensor[index], without copying [B, V] when index is every row in order (the common case)."""
    return tensor if index == list(range(tensor.shape[0])) else tensor[index]


def _groups_by_candidate_window(rows: list[SamplingRow], vocab_size: int
                                ) -> dict[tuple[int | None, bool], list[int]]:
    """Row indices keyed by (how many best tokens to consider, whether that is a top-k).

    Width None: no top-k or top-p, so the row samples from the whole (min-p filtered) vocabulary.
    """
    groups: dict[tuple[int | None, bool], list[int]] = {}
    for i, row in enumerate(rows):
        if row.params.top_k > 0:
            key = (min(row.params.top_k, vocab_size), True)
        elif row.params.top_p < 1.0:
            key = (min(NUCLEUS_WINDOW, vocab_size), False)
        else:
            key = (None, False)
        groups.setdefault(key, []).append(i)
    return groups


def _sample_full_vocabulary(scaled: torch.Tensor, rows: list[SamplingRow], uniforms: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(scaled, -1)
    if any(row.params.min_p > 0.0 for row in rows):
        probs = _drop_below_min_p(probs, probs.amax(-1, keepdim=True), rows)
    return inverse_cdf(probs, uniforms)


def _sample_nucleus(scaled: torch.Tensor, rows: list[SamplingRow], uniforms: torch.Tensor,
                    width: int) -> torch.Tensor:
    """Top-p without top-k: the nucleus is looked for among the `width` best tokens, and among the
    whole vocabulary for the rows where those fall short of top_p."""
    token_ids, too_narrow = _sample_in_window(scaled, rows, uniforms, width, renormalise_in_window=False)
    if width < scaled.shape[1] and too_narrow.any():
        wider = too_narrow.nonzero().squeeze(1).tolist()
        token_ids[wider], _ = _sample_in_window(scaled[wider], [rows[i] for i in wider], uniforms[wider],
                                                scaled.shape[1], renormalise_in_window=False)
    return token_ids


def _sample_in_window(scaled: torch.Tensor, rows: list[SamplingRow], uniforms: torch.Tensor,
                      width: int, renormalise_in_window: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples among each row's `width` best tokens after top-p and min-p.

    Returns the token ids, and which rows' window holds less probability mass than their top_p
    (meaningful only without renormalisation, i.e. without top-k).
    """
    probs, candidate_ids, too_narrow = _window_probabilities(scaled, rows, width, renormalise_in_window)
    chosen = candidate_ids.gather(1, inverse_cdf(probs, uniforms)[:, None]).squeeze(1)
    return chosen, too_narrow


def _window_probabilities(scaled: torch.Tensor, rows: list[SamplingRow], width: int, renormalise_in_window: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unnormalised probabilities of each row's `width` best tokens after top-p and min-p, those tokens' ids, which
    rows' window falls short of their top_p)."""
    values, candidate_ids = scaled.topk(width, -1)  # best first
    # Top-k renormalises over the k kept tokens before top-p; without top-k, probabilities are
    # over the whole vocabulary.
    normaliser = (values if renormalise_in_window else scaled).logsumexp(-1, keepdim=True)
    probs = (values - normaliser).exp()
    mass_through = probs.cumsum(-1)
    top_p = to_device(torch.tensor([row.params.top_p for row in rows]), scaled.device)[:, None]
    # Keep the smallest prefix whose mass reaches top_p: every token whose predecessors fall short.
    in_nucleus = (mass_through - probs < top_p - TOP_P_SLACK) | (top_p >= 1.0)
    in_nucleus[:, 0] = True
    probs = probs.masked_fill(~in_nucleus, 0.0)
    if any(row.params.min_p > 0.0 for row in rows):
        probs = _drop_below_min_p(probs, probs[:, :1], rows)
    return probs, candidate_ids, mass_through[:, -1] < top_p.squeeze(1) - TOP_P_SLACK


def target_probabilities(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The distribution _sample draws each row's token from, as dense normalised probabilities [B, V] (rows of
    requests that sample; logits already penalised and masked). Speculative decoding accepts and resamples
    against it."""
    scaled = _scaled(logits, rows)
    vocab_size = scaled.shape[1]
    probs = torch.zeros_like(scaled)
    for (width, top_k), members in _groups_by_candidate_window(rows, vocab_size).items():
        group, group_rows = _rows_of(scaled, members), [rows[i] for i in members]
        if width is None:
            weights = torch.softmax(group, -1)
            if any(row.params.min_p > 0.0 for row in group_rows):
                weights = _drop_below_min_p(weights, weights.amax(-1, keepdim=True), group_rows)
        else:
            window, ids, too_narrow = _window_probabilities(group, group_rows, width, top_k)
            if not top_k and width < vocab_size and bool(too_narrow.any()):   # the nucleus needs the whole vocabulary
                window, ids, _ = _window_probabilities(group, group_rows, vocab_size, False)
            weights = torch.zeros_like(group).scatter_(1, ids, window)
        probs[members] = weights / weights.sum(-1, keepdim=True)
    return probs


def _drop_below_min_p(probs: torch.Tensor, top_prob: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    min_p = to_device(torch.tensor([row.params.min_p for row in rows]), probs.device)[:, None]
    return probs.masked_fill(probs < min_p * top_prob, 0.0)


def inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, an index drawn with probability proportional to weights, given a uniform in [0, 1).

    The target is strictly below the row's total (float32 uniforms top out at 1 - 2**-24), so the
    first cumulative weight above it belongs to an index of positive weight.
    """
    cumulative = weights.cumsum(-1)
    targets = uniforms * cumulative[:, -1]
    return torch.searchsorted(cumulative, targets[:, None], right=True).squeeze(1)


def sampled_tokens(logits: torch.Tensor, rows: list[SamplingRow], token_ids: torch.Tensor) -> list[SampledToken]:
    ids = token_ids.tolist()
    wanted = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
    if not wanted:
        return [SampledToken(token_id, None, None) for token_id in ids]
    # Logprobs come after penalties and bans, so a token the sampler cannot pick shows as impossible,
    # but before temperature, top-k, top-p and min-p, so they describe the model rather than each
    # request's sampling settings and stay comparable across requests.
    # (a row with no finite logit has every logprob -inf rather than NaN)
    logprobs = preferences(torch.log_softmax(preferences(_rows_of(logits, wanted)), -1))
    chosen = logprobs.gather(1, token_ids[wanted][:, None]).squeeze(1).tolist()
    top_values, top_ids = logprobs.topk(max(rows[i].params.logprobs for i in wanted), -1)
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    by_row = {}
    for j, i in enumerate(wanted):
        k = rows[i].params.logprobs
        by_row[i] = (chosen[j], list(zip(top_ids[j][:k], top_values[j][:k])))
    return [SampledToken(token_id, *by_row.get(i, (None, None))) for i, token_id in enumerate(ids)]
