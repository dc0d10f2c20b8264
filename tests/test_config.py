import pytest

from llm_jax import config as cfg


def test_default_config_validates():
    cfg.validate(cfg.default_config())


@pytest.mark.parametrize("name", sorted(cfg.MODEL_PRESETS))
def test_every_preset_validates(name):
    c = cfg.apply_preset(cfg.default_config(), name)
    c.data.seq_len = min(c.data.seq_len, c.model.max_seq_len)
    cfg.validate(c)
    assert all(c.model[k] == v for k, v in cfg.MODEL_PRESETS[name].items())


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
        ("train.min_lr_ratio", -1.0, r"train.min_lr_ratio must be in \[0.0, 1.0\] \(got -1.0\)"),
        ("train.min_lr_ratio", 1.5, "min_lr_ratio"),
        ("train.b1", 1.0, r"train.b1 must be in \[0.0, 1.0\)"),
        ("train.b2", -0.1, "train.b2"),
        ("train.eps", 0.0, "train.eps must be > 0.0"),
        ("train.weight_decay", -0.1, "train.weight_decay must be >= 0.0"),
        ("train.warmup_steps", -1, "train.warmup_steps must be >= 0"),
        ("train.decay_fraction", 0.0, r"train.decay_fraction must be in \(0.0, 1.0\]"),
        ("data.val_fraction", 0.0, r"data.val_fraction must be in \(0.0, 1.0\)"),
        ("data.val_fraction", 1.0, "val_fraction"),
        ("train.grad_clip", -1.0, "train.grad_clip must be >= 0.0"),
        ("train.seed", -1, "train.seed must be >= 0"),
        ("checkpoint.keep_every", -5, "checkpoint.keep_every"),
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


def test_a_data_path_selects_files():
    c = cfg.default_config()
    c.data.path = "/some/corpus/*.txt"  # source left at its default, shakespeare
    assert cfg.validate(c).data.source == "files"
    c = cfg.default_config()
    c.data.update(source="hf", hf_name="wikitext", path="/x.txt")
    with pytest.raises(cfg.ConfigError, match="data.path is set but data.source='hf'"):
        cfg.validate(c)


def test_boundary_values_are_accepted():
    c = cfg.default_config()
    c.train.update(min_lr_ratio=0.0, b1=0.0, weight_decay=0.0, warmup_steps=0, grad_clip=0.0)
    c.train.decay_fraction = 1.0
    cfg.validate(c)
