import pytest

from llm_jax import config as cfg


def test_default_config_validates():
    cfg.validate(cfg.default_config())


@pytest.mark.parametrize("name", sorted(cfg.MODEL_PRESETS))
def test_every_preset_validates(name):
    c = cfg.apply_preset(cfg.default_config(), name)
    c.data.seq_len = min(c.data.seq_len, c.model.max_seq_len)
    cfg.validate(c)
    assert c.model.preset == name


def test_unknown_preset_names_the_choices():
    with pytest.raises(cfg.ConfigError, match="gpt2-small"):
        cfg.apply_preset(cfg.default_config(), "gpt5")


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("model.positions", "alibi", "model.positions"),
        ("model.n_heads", 3, "divisible"),
        ("data.seq_len", 4096, "max_seq_len"),
        ("train.lr", -1.0, "lr"),
    ],
)
def test_bad_values_name_the_key(key, value, match):
    c = cfg.default_config()
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(cfg.ConfigError, match=match):
        cfg.validate(c)


def test_derived_sizes():
    m = cfg.default_config().model
    m.update(d_model=96, n_heads=6, n_kv_heads=0, d_ff=0, mlp="swiglu", vocab_size=300)
    assert cfg.head_dim(m) == 16
    assert cfg.n_kv_heads(m) == 6
    assert cfg.d_ff(m) == 256
    assert cfg.padded_vocab(m) == 384


def test_token_budget_sets_steps():
    c = cfg.default_config()
    c.train.tokens = 16 * 128 * 7 + 5
    assert cfg.train_steps(c) == 7
