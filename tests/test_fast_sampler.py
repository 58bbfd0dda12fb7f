"""fast_sampler.SharedPrefixSampler against Hugging Face's GPT-Neo (CPU; one CUDA test marked gpu).

Tiny random GPT-Neo (hidden 64, 4 layers alternating global/local, window 8)
on the ttsr vocabulary; prompts are longer than the window so local attention
really hides part of them.
"""


import numpy as np
import pytest
import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

import fast_sampler as fs

WINDOW = 8


pytestmark = pytest.mark.usefixtures("torch_one_thread")



def neo_config(tokenizer, **overrides) -> GPTNeoConfig:
    settings = dict(
        vocab_size=len(tokenizer), hidden_size=64, num_layers=4, num_heads=4,
        attention_types=[[["global", "local"], 2]], window_size=WINDOW, intermediate_size=128,
        max_position_embeddings=256, embed_dropout=0.0, resid_dropout=0.0, attention_dropout=0.0,
        initializer_range=0.1,  # peaked enough that greedy choices are not near-ties
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPTNeoConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return GPTNeoForCausalLM(neo_config(tokenizer)).eval()


def random_prompts(lengths=(21, 12, 33), seed=0, vocab=64):
    generator = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, vocab, (n - 1,), generator=generator).tolist() for n in lengths]


def hf_logits(model, rows):
    """HF logits (B, L, V) for left-padded rows, positions counting real tokens (as generate does)."""
    ids, mask = fs.left_pad(rows)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits, mask


# --------------------------------------------------------------------------
# (a) prefill


def test_prefill_logits_match_hf_for_left_padded_prompts(model):
    prompts = random_prompts()
    sampler = fs.SharedPrefixSampler(model)
    ids, mask = fs.left_pad(prompts)
    result = sampler.prefill(ids, mask, all_logits=True)
    reference, _ = hf_logits(model, prompts)
    assert result.logits.shape == reference.shape
    torch.testing.assert_close(result.logits[mask], reference[mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sampler.prefill(ids, mask).logits, reference[:, -1], atol=1e-4, rtol=1e-4)
    assert result.keys[0].shape == (3, 4, ids.shape[1], 16) and result.keys[0].dtype == torch.float32

    # The window matters: without it (all layers global) the logits are not HF's.
    unwindowed = fs.SharedPrefixSampler(model)
    unwindowed.window = 10_000
    assert (unwindowed.prefill(ids, mask, all_logits=True).logits[mask] - reference[mask]).abs().max() > 1e-3


def test_length_bucket_padding_changes_nothing(model):
    prompts = random_prompts()
    ids, mask = fs.left_pad(prompts)
    plain = fs.SharedPrefixSampler(model).prefill(ids, mask, all_logits=True).logits
    bucketed = fs.SharedPrefixSampler(model, length_bucket=16).prefill(ids, mask, all_logits=True).logits
    torch.testing.assert_close(bucketed[mask], plain[mask], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------
# (b) decoding


@pytest.mark.parametrize("bucket, in_place, attention", [(1, True, "scores"), (16, True, "scores"),
                                                         (1, False, "scores"), (1, True, "fused"), (16, True, "fused")])
def test_every_decode_step_matches_hf_full_recompute(model, bucket, in_place, attention):
    """12 steps, past the local layers' window of 8: the window hides prompt keys, then the samples' own."""
    prompts = random_prompts()
    generator = torch.Generator().manual_seed(1)
    continuations = torch.randint(3, 64, (3, 4, 12), generator=generator)  # S = 4 different continuations
    sampler = fs.SharedPrefixSampler(model, length_bucket=bucket, attention=attention)
    sampler._scores_in_place = in_place  # False: the concatenating form torch_compile mode traces
    logits = sampler.forced_logits(prompts, continuations)
    assert logits.shape == (3, 4, 13, 64)
    rows = [prompts[b] + continuations[b, s].tolist() for b in range(3) for s in range(4)]
    reference, _ = hf_logits(model, rows)
    reference = reference[:, -13:].reshape(3, 4, 13, -1)  # last prompt position, then each continuation token
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


def test_greedy_decoding_equals_hf_generate(model, tokenizer):
    prompts = random_prompts()
    sampler = fs.SharedPrefixSampler(model)
    ours = sampler.sample(prompts, n_samples=2, max_new_tokens=15, temperature=0.0)
    theirs = fs.hf_generate_reference(model, prompts, n_samples=1, max_new_tokens=15, temperature=0.0)
    for b in range(3):
        assert ours[b][0] == ours[b][1] == theirs[b][0]
        assert len(theirs[b][0]) == 15
    # With an EOS that greedy decoding produces: both stop there.
    eos = ours[0][0][4]
    ours = sampler.sample(prompts, n_samples=2, max_new_tokens=15, temperature=0.0, eos_id=eos, pad_id=0)
    theirs = fs.hf_generate_reference(model, prompts, n_samples=1, max_new_tokens=15, temperature=0.0,
                                      eos_id=eos, pad_id=0)
    assert [problem[0] for problem in ours] == [problem[0] for problem in theirs]
    assert ours[0][0][-1] == eos and len(ours[0][0]) <= 5


def test_hf_reference_sampling_returns_the_same_layout(model):
    prompts = random_prompts((9, 14))
    state = torch.random.get_rng_state()
    children = fs.hf_generate_reference(model, prompts, n_samples=5, max_new_tokens=6, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's global generator is left alone
    assert len(children) == 2 and all(len(problem) == 5 for problem in children)
    assert all(len(child) == 6 for problem in children for child in problem)
    assert fs.hf_generate_reference(model, prompts, n_samples=5, max_new_tokens=6, seed=0) == children


# --------------------------------------------------------------------------
# (c) reproducibility, (d) EOS, (e) one prefill


def test_seeded_sampling_is_reproducible(model):
    prompts = random_prompts()
    sampler = fs.SharedPrefixSampler(model)
    first = sampler.sample(prompts, n_samples=7, max_new_tokens=10, seed=123)
    assert sampler.sample(prompts, n_samples=7, max_new_tokens=10, seed=123) == first
    assert sampler.sample(prompts, n_samples=7, max_new_tokens=10, seed=124) != first
    generator = torch.Generator().manual_seed(123)
    assert sampler.sample(prompts, n_samples=7, max_new_tokens=10, generator=generator) == first
    # Samples of one problem differ from each other (they are independent draws).
    assert len({tuple(child) for child in first[0]}) > 1
    # A bucketed sampler (as the graph modes use) draws the same children.
    bucketed = fs.SharedPrefixSampler(model, length_bucket=32)
    assert bucketed.sample(prompts, n_samples=7, max_new_tokens=10, seed=123) == first


def test_fused_attention_draws_the_same_children(model, tokenizer):
    prompts = random_prompts()
    kwargs = dict(n_samples=7, max_new_tokens=12, seed=11, eos_id=tokenizer.eos_token_id, pad_id=0)
    scores, fused = fs.SharedPrefixSampler(model), fs.SharedPrefixSampler(model, attention="fused")
    assert fused.key_dim == 24 and fused.key_dtype == torch.float32  # head_dim 16 + the bias slot, padded to 8
    assert fused.sample(prompts, **kwargs) == scores.sample(prompts, **kwargs)
    grammar = dict(kwargs, grammar=expression_grammar(tokenizer, scores), max_nodes=[5, 9, 25])
    assert fused.sample(prompts, **grammar) == scores.sample(prompts, **grammar)
    with pytest.raises(ValueError, match="attention must be one of"):
        fs.SharedPrefixSampler(model, attention="flash")


def test_given_uniforms_replace_the_seed(model):
    prompts = random_prompts()
    sampler = fs.SharedPrefixSampler(model)
    uniforms = torch.rand((10, 3, 7), generator=torch.Generator().manual_seed(123))
    assert sampler.sample(prompts, n_samples=7, max_new_tokens=10, uniforms=uniforms) == \
        sampler.sample(prompts, n_samples=7, max_new_tokens=10, seed=123)
    with pytest.raises(ValueError, match="uniforms must have shape"):
        sampler.sample(prompts, n_samples=7, max_new_tokens=9, uniforms=uniforms)


def test_a_cached_runner_serves_slightly_shorter_prompts(model):
    long_prompts, short_prompts = random_prompts((40, 12, 33)), random_prompts((36, 20, 9), seed=1)
    reference = fs.SharedPrefixSampler(model)
    sampler = fs.SharedPrefixSampler(model, length_bucket=8)
    kwargs = dict(n_samples=4, max_new_tokens=9, seed=4, eos_id=7, pad_id=0)
    assert sampler.sample(long_prompts, **kwargs) == reference.sample(long_prompts, **kwargs)
    assert sampler.sample(short_prompts, **kwargs) == reference.sample(short_prompts, **kwargs)
    assert [key[3] for key in sampler._runners] == [40]  # 36 tokens ran padded to 40: no second runner
    sampler.sample(random_prompts((17, 5, 9)), **kwargs)  # 24 tokens: 40 is too long, a runner of its own
    assert sorted(key[3] for key in sampler._runners) == [24, 40]


def test_eos_ends_a_sequence(model):
    prompts = random_prompts()
    sampler = fs.SharedPrefixSampler(model)
    free = sampler.sample(prompts, n_samples=19, max_new_tokens=12, seed=5)
    counts = np.bincount([t for problem in free for child in problem for t in child], minlength=64)
    eos = int(np.argmax(counts))  # a frequent token, so many sequences stop early
    stopped = sampler.sample(prompts, n_samples=19, max_new_tokens=12, seed=5, eos_id=eos, pad_id=0)
    n_stopped = 0
    for free_problem, stopped_problem in zip(free, stopped):
        for free_child, child in zip(free_problem, stopped_problem):
            assert child == fs.truncate_at_eos([free_child], eos)[0]  # same draws, cut after the first EOS
            assert eos not in child[:-1]
            n_stopped += child[-1] == eos
            assert len(child) == 12 or child[-1] == eos
    assert n_stopped > 5
    tokens, lengths = sampler.sample_tensor(prompts, n_samples=19, max_new_tokens=12, seed=5, eos_id=eos)
    assert lengths.tolist() == [[len(child) for child in problem] for problem in stopped]

    # Every sequence done at once: the loop stops early (one step) and returns only EOS.
    greedy_first = sampler.sample(prompts, n_samples=3, max_new_tokens=12, temperature=0)
    only = greedy_first[0][0][0]
    done = sampler.sample([prompts[0]], n_samples=3, max_new_tokens=12, temperature=0, eos_id=only)
    assert done == [[[only]] * 3]
    tokens, lengths = sampler.sample_tensor([prompts[0]], n_samples=3, max_new_tokens=12, temperature=0, eos_id=only)
    assert tokens.shape == (1, 3, 1)


@pytest.mark.parametrize("attention", fs.ATTENTION_MODES)
def test_dropping_finished_sequences_changes_no_token(model, tokenizer, attention):
    """The early-stopping decode gathers the unfinished rows as they thin out: the same tensors come back."""
    prompts = random_prompts((21, 12, 33, 17))
    full = fs.SharedPrefixSampler(model, compact=False, attention=attention)
    free = full.sample(prompts, n_samples=9, max_new_tokens=30, seed=2)
    counts = np.bincount([t for problem in free for child in problem for t in child[:6]], minlength=64)
    eos = int(np.argmax(counts))  # the commonest token early on: sequences end at many different steps
    compacting = fs.SharedPrefixSampler(model, attention=attention)
    for kwargs in (dict(seed=2), dict(temperature=0), dict(seed=3, grammar=expression_grammar(tokenizer, full),
                                                            max_nodes=[3, 5, 7, 25])):
        call = dict(n_samples=9, max_new_tokens=30, eos_id=eos, pad_id=0)
        call.update(kwargs, **({"eos_id": tokenizer.eos_token_id} if "grammar" in kwargs else {}))
        before = compacting.compactions
        expected, got = full.sample_tensor(prompts, **call), compacting.sample_tensor(prompts, **call)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        if "grammar" not in kwargs:
            assert compacting.compactions > before, kwargs  # it did drop rows (twice or more: tracked rows)
    assert full.compactions == 0


def test_samples_share_one_prefill(model):
    prompts = random_prompts()
    sampler = fs.SharedPrefixSampler(model)
    children = sampler.sample(prompts, n_samples=19, max_new_tokens=8, seed=0)
    assert sampler.prefill_calls == 1
    assert len(children) == 3 and all(len(problem) == 19 for problem in children)
    (runner,) = sampler._runners.values()
    assert runner.state.keys[0].shape[0] == 3  # the prompt cache has one row per problem, not per sample
    assert runner.state.gen_keys[0].shape[:3] == (3, 4, 19)


# --------------------------------------------------------------------------
# (f) temperature, top-k, top-p


def test_top_k_one_tiny_top_p_and_cold_temperature_are_greedy(model):
    prompts = random_prompts()
    sampler = fs.SharedPrefixSampler(model)
    greedy = sampler.sample(prompts, n_samples=4, max_new_tokens=10, temperature=0)
    assert sampler.sample(prompts, n_samples=4, max_new_tokens=10, top_k=1, seed=1) == greedy
    assert sampler.sample(prompts, n_samples=4, max_new_tokens=10, top_p=1e-6, seed=2) == greedy
    assert sampler.sample(prompts, n_samples=4, max_new_tokens=10, temperature=1e-4, seed=3) == greedy


def test_filter_logits_matches_hf_warpers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_k, top_p in [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.8), (1.3, 7, 0.6)]:
        expected = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k:
            expected = TopKLogitsWarper(top_k)(None, expected)
        if top_p < 1:
            expected = TopPLogitsWarper(top_p)(None, expected)
        got = fs.filter_logits(logits, temperature, top_k, top_p)
        assert torch.equal(torch.isinf(got), torch.isinf(expected))
        torch.testing.assert_close(got[~torch.isinf(got)], expected[~torch.isinf(expected)])


def test_inverse_cdf_draws_follow_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    draws = 40_000
    uniforms = torch.rand(draws, generator=torch.Generator().manual_seed(0))
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.7)]:
        tokens = fs.choose_tokens(logits.expand(draws, -1), uniforms, temperature, top_k, top_p)
        frequencies = torch.bincount(tokens, minlength=5).double() / draws
        expected = fs.filter_logits(logits, temperature, top_k, top_p).softmax(-1).double()
        assert (frequencies[expected == 0] == 0).all()
        assert (frequencies - expected).abs().max() < 0.01
    # u = 0 and u -> 1 stay inside the support.
    edge = fs.choose_tokens(logits.expand(2, -1), torch.tensor([0.0, 1.0 - 1e-7]), 1.0, 2, 1.0)
    assert set(edge.tolist()) <= {0, 1}


# --------------------------------------------------------------------------
# (g) PrefixLM


@pytest.fixture(scope="module")
def pe():
    import point_embedder  # imported here: only the PrefixLM tests need it

    return point_embedder


@pytest.fixture(scope="module")
def prefix_model(tokenizer, pe):
    torch.manual_seed(1)
    embedder = pe.PointEmbedderConfig(hidden_size=64, mlp_hidden=32, max_points=8, n_prefix=8)
    return pe.PrefixLM(pe.PrefixLMConfig.from_configs(neo_config(tokenizer), embedder)).eval()


def prefix_points(pe, lengths=(3, 8, 5)):
    rng = np.random.default_rng(0)
    X = [rng.normal(size=(n, 2)) for n in lengths]
    return pe.encode_points(X, [x[:, 0] * 2 + x[:, 1] for x in X], max_points=8)


@pytest.mark.parametrize("bucket", [1, 16])
def test_prefix_lm_logits_match_the_wrapper(prefix_model, pe, bucket):
    prompts = random_prompts((6, 13, 9))
    points, point_mask = prefix_points(pe)  # masked prefix slots in two of the rows
    sampler = fs.SharedPrefixSampler(prefix_model, length_bucket=bucket)
    ids, mask = fs.left_pad(prompts)
    with torch.no_grad():
        prefix, prefix_mask = prefix_model.embedder(points, point_mask)
        reference = prefix_model(input_ids=ids, attention_mask=mask.long(), points=points, point_mask=point_mask).logits
    result = sampler.prefill(ids, mask, prefix_embeds=prefix, prefix_mask=prefix_mask, all_logits=True)
    torch.testing.assert_close(result.logits[mask], reference[mask], atol=1e-4, rtol=1e-4)

    continuations = torch.randint(3, 64, (3, 2, 7), generator=torch.Generator().manual_seed(2))
    logits = sampler.forced_logits(prompts, continuations, prefix_embeds=prefix, prefix_mask=prefix_mask)
    rows = [prompts[b] + continuations[b, s].tolist() for b in range(3) for s in range(2)]
    row_ids, row_mask = fs.left_pad(rows)
    with torch.no_grad():
        full = prefix_model(input_ids=row_ids, attention_mask=row_mask.long(),
                            points=points.repeat_interleave(2, 0), point_mask=point_mask.repeat_interleave(2, 0)).logits
    torch.testing.assert_close(logits, full[:, -8:].reshape(3, 2, 8, -1), atol=1e-4, rtol=1e-4)


def test_prefix_lm_greedy_equals_point_embedder_greedy_decode(prefix_model, tokenizer, pe):
    texts = ["<BOS><CONTEXT>gen:3vars:2<POPULATION>(x0+x1)<TARGET>", "<BOS><TARGET>"]
    points, point_mask = prefix_points(pe, (4, 8))
    expected = pe.greedy_decode(prefix_model, tokenizer, texts, points, point_mask, max_new_tokens=10)
    prompts = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    sampler = fs.SharedPrefixSampler(prefix_model)
    children = sampler.sample(prompts, n_samples=2, max_new_tokens=10, temperature=0, points=points,
                              point_mask=point_mask, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    assert [tokenizer.decode(problem[0]) for problem in children] == expected
    assert all(problem[0] == problem[1] for problem in children)


# --------------------------------------------------------------------------
# modes, limits


def test_compile_modes_are_eager_on_cpu(model):
    prompts = random_prompts()
    expected = fs.SharedPrefixSampler(model).sample(prompts, n_samples=3, max_new_tokens=6, seed=9)
    for mode in ("cuda_graphs", "torch_compile"):
        sampler = fs.SharedPrefixSampler(model, compile=mode)
        assert sampler.active_mode == "eager"
        assert sampler.sample(prompts, n_samples=3, max_new_tokens=6, seed=9) == expected
    with pytest.raises(ValueError):
        fs.SharedPrefixSampler(model, compile="fastest")


def test_too_long_a_generation_is_refused(model):
    sampler = fs.SharedPrefixSampler(model)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        sampler.sample([[1] * 250], n_samples=2, max_new_tokens=10)
    with pytest.raises(ValueError):
        sampler.sample([[]], n_samples=2, max_new_tokens=10)


def test_batch_rows_buckets(model):
    padded = fs.SharedPrefixSampler(model, pad_batches=True)
    assert [padded.batch_rows(b) for b in (1, 2, 3, 5, 17, 32, 33, 64, 65, 250, 256)] == \
        [1, 2, 4, 8, 32, 32, 64, 64, 96, 256, 256]
    assert fs.SharedPrefixSampler(model).batch_rows(5) == 5  # eager on the CPU: no padding by default


@pytest.mark.parametrize("B", [3, 5])
def test_padded_batches_give_the_same_children(model, tokenizer, B):
    """Padding rows (graph modes bucket the batch) change nothing for the real rows, grammar included."""
    prompts = random_prompts(tuple(range(9, 9 + 4 * B, 4)), seed=B)
    plain, padded = fs.SharedPrefixSampler(model), fs.SharedPrefixSampler(model, pad_batches=True)
    kwargs = dict(n_samples=5, max_new_tokens=10, seed=3, eos_id=tokenizer.eos_token_id, pad_id=0)
    expected = plain.sample(prompts, **kwargs)
    assert padded.sample(prompts, **kwargs) == expected
    assert [key[0] for key in padded._runners] == [padded.batch_rows(B)] and padded.batch_rows(B) > B
    grammar = expression_grammar(tokenizer, plain)
    constrained = dict(kwargs, grammar=grammar, allowed=torch.ones(B, plain.vocab_size, dtype=torch.bool),
                       max_nodes=list(range(3, 3 + B)))
    assert padded.sample(prompts, **constrained) == plain.sample(prompts, **constrained)


def test_launched_calls_in_flight_give_what_sequential_calls_give(model, tokenizer):
    """Several launches of one shape at once (the runner's buffers are reused) and late results."""
    sampler = fs.SharedPrefixSampler(model)
    eos = tokenizer.eos_token_id
    calls = [dict(prompt_ids=random_prompts(seed=seed), n_samples=4, max_new_tokens=9, seed=seed, eos_id=eos)
             for seed in range(3)]
    expected = [sampler.sample_tensor(**call) for call in calls]
    pending = [sampler.launch(**call) for call in calls]
    for (tokens, lengths), handle in zip(expected, pending):
        got_tokens, got_lengths = handle.result()
        assert torch.equal(got_lengths, lengths)
        for b in range(3):
            for s in range(4):
                n = int(lengths[b, s])
                assert got_tokens[b, s, :n].tolist() == tokens[b, s, :n].tolist()
    # Without the early stop the tokens run to max_new_tokens, the same samples.
    tokens, lengths = sampler.launch(**calls[0], early_stop=False).result()
    assert tokens.shape[2] == 9 and torch.equal(lengths, expected[0][1])


# --------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_logits_match_hf_and_graph_modes_match_eager(tokenizer):
    torch.manual_seed(0)
    cpu_model = GPTNeoForCausalLM(neo_config(tokenizer)).eval()
    prompts = random_prompts((40, 25, 61, 7))
    continuations = torch.randint(3, 64, (4, 3, 9), generator=torch.Generator().manual_seed(3))
    rows = [prompts[b] + continuations[b, s].tolist() for b in range(4) for s in range(3)]
    ids, mask = fs.left_pad(rows)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    for dtype, tolerance in [(torch.float32, 1e-3), (torch.bfloat16, 6e-2)]:
        model = GPTNeoForCausalLM(neo_config(tokenizer)).eval()
        model.load_state_dict(cpu_model.state_dict())
        model = model.to("cuda", dtype)
        with torch.no_grad():
            reference = model(input_ids=ids.cuda(), attention_mask=mask.long().cuda(),
                              position_ids=positions.cuda()).logits.float()
        reference = reference[:, -10:].reshape(4, 3, 10, -1)
        scale = max(1.0, reference.abs().max().item())
        for attention in fs.ATTENTION_MODES:  # "fused": flash attention (bf16) / memory-efficient (fp32)
            logits = fs.SharedPrefixSampler(model, attention=attention).forced_logits(prompts, continuations)
            assert (logits - reference).abs().max().item() <= tolerance * scale, (dtype, attention)
        # torch.compile takes tens of seconds per model: compiled in float32 only.
        for mode in ("cuda_graphs", "torch_compile") if dtype == torch.float32 else ("cuda_graphs",):
            fast = fs.SharedPrefixSampler(model, compile=mode)
            assert fast.active_mode in ("cuda_graphs", "torch_compile")
            assert fast.use_graphs and fast.length_bucket == fs.DEFAULT_LENGTH_BUCKET
            bucketed = fs.SharedPrefixSampler(model, length_bucket=fast.length_bucket)
            fused = fs.SharedPrefixSampler(model, compile=mode, attention="fused")
            kwargs = dict(n_samples=5, max_new_tokens=12, eos_id=tokenizer.eos_token_id, pad_id=0)
            for seed in (0, 1):  # the second call replays the captured graph with new data
                expected = bucketed.sample(prompts, seed=seed, **kwargs)
                got = fast.sample(prompts, seed=seed, **kwargs)
                assert all(len(problem) == 5 for problem in got)
                assert any(runner.graph is not None for runner in fast._runners.values())
                # Same uniforms: the same children, but for a rare draw flipped by rounding differences
                # between kernels (a graph replaying stale data would agree on almost nothing).
                agree = np.mean([a == b for p, q in zip(got, expected) for a, b in zip(p, q)])
                assert agree >= 0.75, (mode, dtype, agree)
                got = fused.sample(prompts, seed=seed, **kwargs)  # fused attention in a captured graph
                agree = np.mean([a == b for p, q in zip(got, expected) for a, b in zip(p, q)])
                assert agree >= 0.75, (mode, dtype, "fused", agree)
            greedy = fast.sample(prompts, temperature=0, **kwargs)
            greedy_hf = fs.hf_generate_reference(model, prompts, n_samples=1, max_new_tokens=12, temperature=0,
                                                 eos_id=tokenizer.eos_token_id, pad_id=0)
            agree = np.mean([p[0] == q[0] for p, q in zip(greedy, greedy_hf)])
            assert agree >= (0.75 if dtype == torch.float32 else 0.5), (mode, dtype, agree)


# ------------------------------------------------------------------ grammar-constrained decoding


def expression_grammar(tokenizer, sampler):
    """The Grammar NeuralSR's Proposer uses."""
    from neural_sr import expression_grammar as build

    return build(tokenizer, sampler.vocab_size)


def test_grammar_samples_are_well_formed_within_limits(model, tokenizer):
    """A random model under the grammar: every sample ends, parses, uses only its row's tokens, fits max_nodes."""
    from expression_parser import parse

    sampler = fs.SharedPrefixSampler(model)
    grammar = expression_grammar(tokenizer, sampler)
    vocab = tokenizer.get_vocab()
    rows = [["x0", "+", "*"], ["x0", "x1", "1.0", "-", "/", "sin"], ["x2", "+"]]
    allowed = torch.zeros(3, sampler.vocab_size, dtype=torch.bool)
    for row, texts in enumerate(rows):
        allowed[row, [vocab[t] for t in texts + ["(", ")", "<EOS>"]]] = True
    eos = tokenizer.eos_token_id
    for T, max_nodes in [(16, [5, 7, 3]), (40, [25, 25, 25]), (2, [1, 1, 1])]:
        got = sampler.sample(random_prompts(), n_samples=19, max_new_tokens=T, temperature=1.5, eos_id=eos, seed=T,
                             grammar=grammar, allowed=allowed, max_nodes=max_nodes)
        for row, samples in enumerate(got):
            for ids in samples:
                assert ids[-1] == eos and len(ids) <= T, ids
                tokens = tokenizer.convert_ids_to_tokens(ids[:-1])
                assert set(tokens) <= set(rows[row]) | {"(", ")"}, tokens
                tree = parse("".join(tokens))
                assert 1 <= len(tree) <= max_nodes[row], (tokens, tree)
    # Free sampling from the same random model mostly does not parse at all: the grammar does the work.
    free = sampler.sample(random_prompts(), n_samples=19, max_new_tokens=16, temperature=1.5, eos_id=eos, seed=0)
    assert sum(ids[-1] == eos for samples in free for ids in samples) < 0.5 * 3 * 19


def test_expression_grammar_kinds(model, tokenizer):
    grammar = expression_grammar(tokenizer, fs.SharedPrefixSampler(model))
    by_kind = {}
    for text, index in tokenizer.get_vocab().items():
        by_kind.setdefault(grammar.kinds[index], set()).add(text)
    assert by_kind[fs.OPERAND] == {f"x{i}" for i in range(10)} | {"1.0"}  # not digits, markers or context words
    assert by_kind[fs.BINARY] == {"+", "-", "*", "/"} and by_kind[fs.END] == {"<EOS>"}
    assert by_kind[fs.OPEN] == {"("} and by_kind[fs.CLOSE] == {")"} and "sin" in by_kind[fs.UNARY]
    assert {"<BOS>", "<PAD>", "gen:", "7", ".", "e"} <= by_kind[fs.OTHER]


def test_grammar_mask_rules():
    kinds = torch.tensor([fs.OTHER, fs.OPERAND, fs.BINARY, fs.UNARY, fs.OPEN, fs.CLOSE, fs.END])
    allowed = torch.ones(1, 7, dtype=torch.bool)

    def may(expect, depth, budget, nodes=0, max_nodes=25):
        mask = fs.grammar_mask(kinds, allowed, torch.tensor([[expect]]), torch.tensor([[depth]]), budget,
                               torch.tensor([[nodes]]), torch.tensor([[max_nodes]]))
        return {name for name, ok in zip("x+s()E", mask[0, 0, 1:].tolist()) if ok}

    assert may(0, 0, 10) == {"x", "s", "("}  # an operand is due
    assert may(1, 0, 10) == {"+", "E"} and may(1, 2, 10) == {"+", ")"}  # after an operand
    assert may(2, 0, 10) == {"("}  # after a function name
    assert may(0, 2, 4) == {"x"}  # 4 tokens left at depth 2: operand, ")", ")", end
    assert may(0, 2, 6) == {"x", "("} and may(0, 2, 7) == {"x", "(", "s"}  # "(" needs 6, a function 7
    assert may(2, 2, 6) == {"("}
    assert may(1, 2, 4) == {")"} and may(1, 0, 2) == {"E"}
    assert may(1, 0, 10, nodes=24) == {"E"}  # no room for an operator and its operand
    expect, depth, nodes = (torch.zeros(1, 3, dtype=torch.long) for _ in range(3))
    fs.grammar_advance(kinds, torch.tensor(fs._EXPECT_AFTER), torch.tensor([[4, 3, 1]]), expect, depth, nodes)
    assert expect.tolist() == [[0, 2, 1]] and depth.tolist() == [[1, 0, 0]] and nodes.tolist() == [[0, 1, 1]]


def test_grammar_arguments_are_checked(model, tokenizer):
    sampler = fs.SharedPrefixSampler(model)
    grammar = expression_grammar(tokenizer, sampler)
    with pytest.raises(ValueError, match="eos_id"):
        sampler.sample(random_prompts(), max_new_tokens=8, grammar=grammar)
    with pytest.raises(ValueError, match="allowed must have shape"):
        sampler.sample(random_prompts(), max_new_tokens=8, eos_id=tokenizer.eos_token_id, grammar=grammar,
                       allowed=torch.ones(2, 5, dtype=torch.bool))


def cuda_samplers(tokenizer):
    """(eager, CUDA-graph) samplers of one random float32 model on the GPU."""
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(neo_config(tokenizer)).eval().to("cuda", torch.float32)
    return fs.SharedPrefixSampler(model), fs.SharedPrefixSampler(model, compile="cuda_graphs")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_grammar_sampling_is_well_formed_and_matches_eager(tokenizer):
    """The grammar's state lives in the captured graph's static buffers: replays must update and reset it."""
    from expression_parser import parse

    eager, graphs = cuda_samplers(tokenizer)
    grammar = expression_grammar(tokenizer, eager)
    allowed = torch.ones(3, eager.vocab_size, dtype=torch.bool)
    kwargs = dict(n_samples=7, max_new_tokens=24, temperature=1.2, eos_id=tokenizer.eos_token_id, grammar=grammar,
                  allowed=allowed.cuda(), max_nodes=[9, 15, 25])
    for seed in (0, 1):  # the second call replays the graph with fresh grammar state
        got = graphs.sample(random_prompts(), seed=seed, **kwargs)
        expected = eager.sample(random_prompts(), seed=seed, **kwargs)
        assert any(runner.graph is not None for runner in graphs._runners.values())
        for row, samples in enumerate(got):
            for ids in samples:
                assert ids[-1] == tokenizer.eos_token_id
                tree = parse("".join(tokenizer.convert_ids_to_tokens(ids[:-1])))
                assert len(tree) <= kwargs["max_nodes"][row]
        agree = np.mean([a == b for p, q in zip(got, expected) for a, b in zip(p, q)])
        assert agree >= 0.75, agree


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_launches_do_not_block_and_padded_graphs_match(tokenizer):
    """On CUDA a launch queues its work (no synchronisation); results of calls in flight are right."""
    eager, graphs = cuda_samplers(tokenizer)
    assert graphs.pad_batches and not eager.pad_batches
    kwargs = dict(n_samples=6, max_new_tokens=16, eos_id=tokenizer.eos_token_id, pad_id=0, temperature=0)
    prompt_sets = [random_prompts((40, 25, 61), seed=1), random_prompts((30, 12, 50, 22, 9), seed=2)]
    expected = [eager.sample_tensor(prompts, **kwargs) for prompts in prompt_sets]
    for _ in range(2):  # the second round replays captured graphs
        handles = [graphs.launch(prompts, **kwargs) for prompts in prompt_sets]
        torch.cuda._sleep(50_000_000)  # keep the device busy: a launch must still return at once
        late = graphs.launch(prompt_sets[0], **kwargs)
        assert not late.ready()
        for (tokens, lengths), handle in zip(expected + expected[:1], handles + [late]):
            got_tokens, got_lengths = handle.result()
            agree = (got_lengths == lengths).float().mean().item()  # greedy: kernels may flip a near-tie
            assert agree >= 0.75, agree
    assert {key[0] for key in graphs._runners} == {4, 8}  # 3 and 5 problems padded to buckets
