"""Point embedder, PrefixLM (forward, save/load, greedy decoding) and a tiny overfitting run."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoConfig, GPTNeoForCausalLM

import expressions as ex
import format_utils as fu
import point_embedder as pe
from expression_parser import parse


pytestmark = pytest.mark.usefixtures("torch_one_thread")



def decoder_config(tokenizer, **overrides) -> GPTNeoConfig:
    settings = dict(
        vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4,
        attention_types=[[["global"], 2]], max_position_embeddings=256,
        embed_dropout=0.0, resid_dropout=0.0, attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPTNeoConfig(**{**settings, **overrides})


def tiny_model(tokenizer, seed=0, **embedder) -> pe.PrefixLM:
    torch.manual_seed(seed)
    settings = pe.PointEmbedderConfig(**{"hidden_size": 32, "mlp_hidden": 32, **embedder})
    return pe.PrefixLM(pe.PrefixLMConfig.from_configs(decoder_config(tokenizer), settings)).eval()


def random_points(batch=3, n_points=(5, 40, 64), n_vars=(1, 2, 3), seed=0):
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(n, d)) for n, d in zip(n_points, n_vars)]
    y = [x.sum(axis=1) * 3.0 + 1.0 for x in X]
    return pe.encode_points(X[:batch], y[:batch])


def batch_tokens(tokenizer, texts):
    encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    labels = encoded.input_ids.masked_fill(encoded.attention_mask == 0, -100)
    return encoded.input_ids, encoded.attention_mask, labels


# --------------------------------------------------------------------------
# encode_points


def test_encode_points_pads_columns_appends_y_and_masks_padded_points():
    X = [np.arange(5.0), np.ones((3, 4))]
    y = [np.arange(5.0) * 2, np.full(3, 7.0)]
    points, mask = pe.encode_points(X, y, max_input_dim=10, max_points=8)
    assert points.dtype == torch.float32 and points.shape == (2, 8, 11)
    assert mask.dtype == torch.bool and mask.sum(dim=1).tolist() == [5, 3]
    assert mask[0, :5].all() and not mask[0, 5:].any()  # real points first
    assert torch.equal(points[0, :5, 0], torch.arange(5.0))
    assert torch.equal(points[0, :5, -1], torch.arange(5.0) * 2)
    assert not points[0, :, 1:10].any()  # padded input columns are zero
    assert not points[0, 5:].any()  # padded points are zero
    assert torch.equal(points[1, :3, :4], torch.ones(3, 4)) and not points[1, :3, 4:10].any()


def test_encode_points_truncates_to_first_points_or_a_seeded_subset():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(100, 2)), rng.normal(size=100)
    points, mask = pe.encode_points([X], [y], max_points=64)
    assert mask.all()
    assert np.allclose(points[0, :, :2].numpy(), X[:64].astype(np.float32))
    assert np.allclose(points[0, :, -1].numpy(), y[:64].astype(np.float32))
    seeded, _ = pe.encode_points([X], [y], max_points=64, seed=7)
    again, _ = pe.encode_points([X], [y], max_points=64, seed=[7])
    other, _ = pe.encode_points([X], [y], max_points=64, seed=8)
    assert torch.equal(seeded, again) and not torch.equal(seeded, other) and not torch.equal(seeded, points)
    rows = [int(np.flatnonzero(np.isclose(X[:, 0].astype(np.float32), v))[0]) for v in seeded[0, :, 0].tolist()]
    assert rows == sorted(rows) and len(set(rows)) == 64  # a subset, in the original order


def test_encode_points_rejects_too_many_variables_naming_the_sample():
    X = [np.zeros((4, 2)), np.zeros((4, 11))]
    with pytest.raises(ValueError, match="sample 1: 11 input variables"):
        pe.encode_points(X, [np.zeros(4), np.zeros(4)])
    with pytest.raises(ValueError, match="sample 0"):
        pe.encode_points([np.zeros((0, 1))], [np.zeros(0)])
    with pytest.raises(ValueError, match="sample 0: non-finite"):
        pe.encode_points([np.array([1.0, np.nan])], [np.zeros(2)])


# --------------------------------------------------------------------------
# E2EPointEmbedder


@pytest.mark.parametrize("n_prefix", [64, 8])
def test_masked_points_never_change_the_prefix(n_prefix):
    torch.manual_seed(0)
    embedder = pe.E2EPointEmbedder(pe.PointEmbedderConfig(hidden_size=32, mlp_hidden=32, n_prefix=n_prefix))
    points, mask = random_points()
    prefix, prefix_mask = embedder(points, mask)
    assert prefix.shape == (3, n_prefix, 32)
    garbage = points.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), 11) * 1e6
    garbage[0, -1, 0] = float("nan")
    changed, changed_mask = embedder(garbage, mask)
    assert torch.equal(prefix, changed) and torch.equal(prefix_mask, changed_mask)
    if n_prefix == 64:  # one vector per point: the mask passes through, padded vectors are zero
        assert torch.equal(prefix_mask, mask) and not prefix[~mask].any()
    else:
        assert prefix_mask.all()


def test_normalisation_standardises_real_points_and_keeps_scale_in_statistics():
    points, mask = random_points()
    features = pe.normalized_features(points, mask)
    assert features.shape == (3, 64, 33) and torch.isfinite(features).all()
    scaled = features[1, :40, :11]
    assert torch.allclose(scaled[:, [0, 1, 10]].mean(dim=0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(scaled[:, [0, 1, 10]].std(dim=0, unbiased=False), torch.ones(3), atol=1e-4)
    assert not features[1, 40:].any()  # padded points
    assert not features[1, :, 2:10].any()  # padded columns: zero values and statistics
    doubled = pe.normalized_features(points * 2, mask)
    assert torch.allclose(doubled[..., :11], features[..., :11], atol=1e-5)  # standardised alike ...
    assert not torch.allclose(doubled[..., 11:], features[..., 11:])  # ... but the statistics tell them apart


def test_normalisation_handles_constant_columns():
    X = np.column_stack([np.linspace(-1, 1, 20), np.full(20, 3.5)])
    points, mask = pe.encode_points([X, np.full((1, 1), 1e9)], [np.full(20, 2.0), np.full(1, -1e9)])
    features = pe.normalized_features(points, mask)
    assert torch.isfinite(features).all()
    assert not features[0, :20, [1, 10]].any()  # constant x1 and constant y are only centred
    assert torch.allclose(features[0, 0, 11 + 10], pe.symlog(torch.tensor(2.0)))  # y's mean is kept
    assert not features[1, 0, :11].any()  # a single point: every column constant
    embedder = pe.E2EPointEmbedder(pe.PointEmbedderConfig(hidden_size=32, mlp_hidden=32))
    assert torch.isfinite(embedder(points, mask)[0]).all()


# --------------------------------------------------------------------------
# PrefixLM


def test_forward_loss_is_finite_and_trains_both_parts(tokenizer):
    model = tiny_model(tokenizer).train()
    points, mask = random_points()
    texts = [pe.DIRECT_PROMPT + "((x0*1.0)+1.0)" + fu.EOS, pe.DIRECT_PROMPT + "x0" + fu.EOS,
             pe.DIRECT_PROMPT + "(x0+x1)" + fu.EOS]
    input_ids, attention_mask, labels = batch_tokens(tokenizer, texts)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, points=points, point_mask=mask)
    assert output.logits.shape == (3, input_ids.shape[1], len(tokenizer))  # token positions only
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert model.embedder.point_mlp[0].weight.grad.abs().sum() > 0
    assert model.decoder.transformer.h[0].attn.attention.q_proj.weight.grad.abs().sum() > 0


def test_onestep_layout_prompt_then_target(tokenizer):
    model = tiny_model(tokenizer, n_prefix=8)
    points, mask = random_points(batch=2)
    prompts = [fu.build_prompt("gen:1", "x0<FITNESS>-.5"), fu.build_prompt("gen:2", "x1<FITNESS>-1")]
    targets = ["(x0+1.0)" + fu.EOS, "x1" + fu.EOS]
    input_ids, attention_mask, labels = batch_tokens(tokenizer, [p + t for p, t in zip(prompts, targets)])
    for row, prompt in enumerate(prompts):
        labels[row, : len(tokenizer.encode(prompt, add_special_tokens=False))] = -100  # loss on the target only
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, points=points, point_mask=mask)
    assert torch.isfinite(output.loss)


def test_padding_and_masked_points_do_not_change_a_rows_logits(tokenizer):
    model = tiny_model(tokenizer)
    points, mask = random_points()
    texts = [pe.DIRECT_PROMPT + "((x0*x0)+1.0)" + fu.EOS, pe.DIRECT_PROMPT + "x0" + fu.EOS]
    input_ids, attention_mask, _ = batch_tokens(tokenizer, texts)
    batched = model(input_ids=input_ids, attention_mask=attention_mask, points=points[:2], point_mask=mask[:2]).logits
    alone_ids = torch.tensor([tokenizer.encode(texts[1], add_special_tokens=False)])
    garbage = points[1:2].clone()
    garbage[~mask[1:2]] = 123.0
    alone = model(input_ids=alone_ids, points=garbage, point_mask=mask[1:2]).logits
    assert torch.allclose(batched[1, : alone_ids.shape[1]], alone[0], atol=1e-5)


@pytest.mark.parametrize("n_prefix", [64, 8])
def test_save_and_load_round_trip_keeps_every_weight(tokenizer, tmp_path, n_prefix):
    model = tiny_model(tokenizer, n_prefix=n_prefix)
    with torch.no_grad():  # weights no initialiser would produce, so a re-initialised one cannot pass
        for parameter in model.embedder.parameters():
            parameter.add_(0.123)
    model.save_pretrained(tmp_path)
    loaded = pe.PrefixLM.from_pretrained(tmp_path).eval()
    original, restored = dict(model.named_parameters()), dict(loaded.named_parameters())
    assert original.keys() == restored.keys()
    assert any(name.startswith("embedder.") for name in restored)
    for name, tensor in original.items():
        assert torch.equal(tensor, restored[name]), name
    assert loaded.decoder.lm_head.weight is loaded.decoder.transformer.wte.weight  # still tied
    assert loaded.config.point_embedder_config() == model.config.point_embedder_config()
    points, mask = random_points()
    input_ids = torch.tensor([tokenizer.encode(pe.DIRECT_PROMPT + "(x0+1.0)", add_special_tokens=False)] * 3)
    with torch.no_grad():
        before = model(input_ids=input_ids, points=points, point_mask=mask).logits
        after = loaded(input_ids=input_ids, points=points, point_mask=mask).logits
    assert torch.equal(before, after)


def test_load_model_returns_the_saved_kind(tokenizer, tmp_path):
    plain = GPTNeoForCausalLM(decoder_config(tokenizer))
    plain.save_pretrained(tmp_path / "plain")
    tiny_model(tokenizer).save_pretrained(tmp_path / "prefix")
    assert type(pe.load_model(tmp_path / "plain")) is GPTNeoForCausalLM
    assert type(pe.load_model(tmp_path / "prefix")) is pe.PrefixLM
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "prefix")) is pe.PrefixLM


def test_config_round_trip_and_validation(tokenizer):
    settings = pe.PointEmbedderConfig(hidden_size=32, n_prefix=16, normalize=False)
    assert pe.PointEmbedderConfig.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="unknown"):
        pe.PointEmbedderConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="hidden_size"):
        pe.PrefixLMConfig.from_configs(decoder_config(tokenizer), pe.PointEmbedderConfig(hidden_size=64))
    config = pe.PrefixLMConfig.from_configs(decoder_config(tokenizer))
    assert config.point_embedder_config().hidden_size == 32
    assert config.gpt_neo_config().num_layers == 2


# --------------------------------------------------------------------------
# Greedy decoding


def naive_greedy(model, tokenizer, prompt, points, mask, max_new_tokens):
    """Reference decoder: the whole sequence re-run every step, no cache, no padding."""
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    generated = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids + generated]), points=points, point_mask=mask).logits
            generated.append(int(logits[0, -1].argmax()))
            if generated[-1] == tokenizer.eos_token_id:
                break
    return tokenizer.decode(generated, skip_special_tokens=False)


@pytest.mark.parametrize("n_prefix", [64, 8])
def test_greedy_decode_with_cache_matches_full_recompute(tokenizer, n_prefix):
    model = tiny_model(tokenizer, seed=3, n_prefix=n_prefix)
    points, mask = random_points()
    prompts = [fu.build_prompt("gen:1", "x0<FITNESS>-.5"), pe.DIRECT_PROMPT, fu.build_prompt("gen:12", "x0")]
    decoded = pe.greedy_decode(model, tokenizer, prompts, points, mask, max_new_tokens=6)
    for row, prompt in enumerate(prompts):
        assert decoded[row] == naive_greedy(model, tokenizer, prompt, points[row:row + 1], mask[row:row + 1], 6)
    direct = pe.greedy_decode(model, tokenizer, None, points, mask, max_new_tokens=6)
    assert direct[1] == decoded[1]


def test_greedy_decode_works_for_a_plain_decoder(tokenizer):
    torch.manual_seed(0)
    plain = GPTNeoForCausalLM(decoder_config(tokenizer)).eval()
    texts = pe.greedy_decode(plain, tokenizer, [fu.BOS, fu.build_prompt("gen:1", "x0")], max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)


# --------------------------------------------------------------------------
# The pipeline can learn


def test_tiny_prefix_lm_overfits_four_direct_examples(tokenizer):
    torch.manual_seed(0)
    settings = pe.PointEmbedderConfig(hidden_size=32, mlp_hidden=64, max_points=16, n_prefix=16)
    model = pe.PrefixLM(pe.PrefixLMConfig.from_configs(decoder_config(tokenizer), settings))
    rng = np.random.default_rng(0)
    formulas = ["x0", "(x0*x0)", "(x0+1.0)", "(x0*x1)"]  # the same X shape; only y tells them apart
    X = [rng.uniform(-2, 2, size=(40, 2)) for _ in formulas]
    y = [ex.evaluate(parse(formula), x) for formula, x in zip(formulas, X)]
    targets = [fu.format_target(parse(formula)) for formula in formulas]
    points, mask = pe.encode_points(X, y, max_points=16)
    input_ids, attention_mask, labels = batch_tokens(tokenizer, [pe.DIRECT_PROMPT + t for t in targets])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                     points=points, point_mask=mask).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert pe.greedy_decode(model, tokenizer, None, points, mask, max_new_tokens=16) == targets
