"""Hugging Face interop: transformers' own GPT-2 and Llama, imported and exported back.

Reference models are built from configs with random weights (no hub, no network) and
compared on logits: llm_jax's on the imported workdir, transformers' on the export.
"""

import json

import jax
import numpy as np
import pytest
from hf_tokenizers import byte_level_bpe
from tiny_run import init_params

from llm_jax import cli
from llm_jax import workdir as workdir_lib
from llm_jax.hf import convert, io
from llm_jax.hf import safetensors as st
from llm_jax.model import ModelConfig, Transformer

torch = transformers = None  # set by `_hf_libraries` when this module's tests run


@pytest.fixture(autouse=True, scope="module")
def _hf_libraries():
    """Import torch and transformers (~2.7 s) for this module's tests, not at collection:
    every pytest worker collects this file, one runs it."""
    global torch, transformers
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")


VOCAB = 300  # not a multiple of 128: the padded rows are exercised
LLAMA = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=VOCAB,
    max_position_embeddings=128,
    rope_theta=5e5,
    tie_word_embeddings=False,
)
LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,  # short, so positions < 64 fall in every band
)


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory):
    return byte_level_bpe(tmp_path_factory.mktemp("bpe"))


def _tokens(n: int = 48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, (2, n))


def _hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


def _our_logits(workdir, tokens) -> np.ndarray:
    config, params = workdir_lib.restore_params(str(workdir))
    model = Transformer(ModelConfig.from_config(config.model))
    logits = jax.jit(model.apply)({"params": params}, tokens)  # compiled whole: cheaper
    return np.asarray(logits)[..., : config.model.vocab_size]


def _round_trip(hf_model, tmp_path, tol: float, scan_layers: bool = True, **save_options):
    """Import, compare logits, export, reload with transformers, compare again."""
    src, workdir, out = tmp_path / "src", tmp_path / "w", tmp_path / "out"
    hf_model.save_pretrained(src, **save_options)
    io.import_hf(str(src), str(workdir), scan_layers=scan_layers)
    tokens = _tokens()
    reference = _hf_logits(hf_model, tokens)
    imported = np.abs(_our_logits(workdir, tokens) - reference).max()
    io.export_hf(str(workdir), str(out))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(hf_model)
    exported = np.abs(_hf_logits(reloaded, tokens) - reference).max()
    assert imported < tol, imported
    assert exported < tol, exported
    return imported


@pytest.mark.parametrize("scan_layers", [True, False])
def test_gpt2_round_trip(tmp_path, scan_layers):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB, resid_pdrop=0.0
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    _round_trip(model, tmp_path, 1e-5, scan_layers)


@pytest.mark.parametrize("rope_scaling", [None, LLAMA3_ROPE], ids=["theta5e5", "llama3"])
def test_llama_round_trip(tmp_path, rope_scaling):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**LLAMA, rope_scaling=rope_scaling)
    model = transformers.LlamaForCausalLM(config).eval()
    _round_trip(model, tmp_path, 1e-5)
    if rope_scaling:
        imported = workdir_lib.load_config(str(tmp_path / "w")).model
        assert imported.rope_scaling == "llama3"
        assert imported.rope_original_max_positions == 16


def test_llama_scaling_changes_the_logits(tmp_path):
    """The llama3 test above would pass vacuously if the scaling did nothing here."""
    torch.manual_seed(0)
    plain = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).eval()
    scaled = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**LLAMA, rope_scaling=LLAMA3_ROPE)
    )
    scaled.load_state_dict(plain.state_dict())
    tokens = _tokens()
    assert np.abs(_hf_logits(plain, tokens) - _hf_logits(scaled.eval(), tokens)).max() > 1e-3


def test_bf16_sharded_llama_round_trip(tmp_path):
    """bf16 weights in several safetensors shards with an index; bf16 tolerance."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).to(torch.bfloat16)
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="100KB")
    assert (src / st.INDEX_FILE).is_file()
    assert len(list(src.glob("*.safetensors"))) > 1
    io.import_hf(str(src), str(tmp_path / "w"))
    config = workdir_lib.load_config(str(tmp_path / "w"))
    assert config.model.param_dtype == "bfloat16"
    tokens = _tokens()
    reference = _hf_logits(model.eval(), tokens)
    # transformers computes in bf16, llm_jax in float32 from the same bf16 weights.
    scale = np.abs(reference).max()
    assert np.abs(_our_logits(tmp_path / "w", tokens) - reference).max() < 0.05 * scale
    io.export_hf(str(tmp_path / "w"), str(tmp_path / "out"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.dtype == torch.bfloat16
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name  # bit-exact weights


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_matches_torch(tmp_path, bias):
    from nanogpt_torch import NanoGPT

    torch.manual_seed(0)
    args = dict(n_layer=2, n_head=4, n_embd=64, block_size=64, bias=bias, vocab_size=VOCAB)
    model = NanoGPT(VOCAB, 64, 64, 2, 4, bias).eval()
    state = {"_orig_mod." + k: v for k, v in model.state_dict().items()}  # torch.compile'd
    torch.save({"model": state, "model_args": args, "iter_num": 0}, tmp_path / "ckpt.pt")
    config = io.import_nanogpt(str(tmp_path / "ckpt.pt"), str(tmp_path / "w"))
    assert config.model.mlp == "gelu_exact"
    assert config.model.attn_bias is bias
    tokens = _tokens()
    with torch.no_grad():
        reference = model(torch.tensor(tokens)).numpy()
    assert np.abs(_our_logits(tmp_path / "w", tokens) - reference).max() < 1e-4


def test_unsupported_configs_are_refused_in_one_line():
    with pytest.raises(convert.ConvertError, match="model_type 'mistral' is not supported"):
        convert.model_overrides({"model_type": "mistral"})
    yarn = dict(LLAMA, model_type="llama", rope_parameters={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(convert.ConvertError, match="rope_scaling type 'yarn'"):
        convert.model_overrides(yarn)


@pytest.mark.parametrize(
    "key,value",
    [
        ("norm_position", "post"),
        ("positions", "sinusoidal"),
        ("qk_norm", True),
        ("parametrization", "mup"),
    ],
)
def test_export_refuses_switches_without_hf_equivalent(key, value):
    config = io.run_config(
        convert.model_overrides(dict(LLAMA, model_type="llama")), "float32", True
    )
    config.model[key] = value
    with pytest.raises(convert.ConvertError, match=f"config.model.{key}="):
        convert.family(config.model)


def test_extra_tensors_are_refused(tmp_path):
    """A bias llm_jax's Llama has no place for (attention_bias off, q bias present)."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    model.save_pretrained(tmp_path / "src")
    reader = st.TensorReader.from_dir(tmp_path / "src")
    tensors = [(n, reader.shape(n), reader.read(n).dtype) for n in reader.names()]
    tensors.append(("model.layers.0.self_attn.q_proj.bias", (64,), np.dtype(np.float32)))
    src2 = tmp_path / "src2"
    src2.mkdir()
    st.write_checkpoint(
        src2, tensors, lambda n: reader.read(n) if n in reader else np.zeros(64, np.float32)
    )
    (src2 / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    with pytest.raises(convert.ConvertError, match="q_proj.bias"):
        io.import_hf(str(src2), str(tmp_path / "w"))


def test_cli_import_generate_export(tmp_path, hf_tokenizer_dir, capsys):
    """The commands as a user runs them, on a GPT-2 with a byte-level BPE tokenizer."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB
    )
    src = tmp_path / "src"
    transformers.GPT2LMHeadModel(config).save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((hf_tokenizer_dir / name).read_bytes())
    w = str(tmp_path / "w")
    assert cli.run(["import-hf", str(src), "--workdir", w]) == 0
    assert cli.run(["import-hf", str(src), "--workdir", w]) == 2  # never over a checkpoint
    assert "already holds checkpoints" in capsys.readouterr().err
    argv = ["generate", "--workdir", w, "--prompt", "To be", "--max-new-tokens", "4"]
    assert cli.run([*argv, "--temperature", "0", "--stream"]) == 0
    assert capsys.readouterr().out.startswith("--- prompt 1, sample 1 ---\nTo be")
    assert cli.run(["export-hf", "--workdir", w, "--out", str(tmp_path / "out")]) == 0
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["architectures"] == ["GPT2LMHeadModel"]
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok.decode(tok("Wherefore art thou")["input_ids"]) == "Wherefore art thou"


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_native_preset_exports_to_transformers(tmp_path, preset):
    """A model made here (not imported) loads in transformers with the same logits."""
    from llm_jax import config as config_lib

    config = config_lib.apply_preset(config_lib.default_config(), preset)
    config.model.vocab_size = VOCAB  # padded to 384 rows here, 300 in the export
    model = Transformer(ModelConfig.from_config(config.model))
    tokens = _tokens()
    params = init_params(model, tokens, seed=1)
    params = jax.tree.map(lambda p: p * 3, params)  # logits of order 10, not 0.1
    ours = np.asarray(jax.jit(model.apply)({"params": params}, tokens))[..., :VOCAB]
    io.write_workdir(str(tmp_path / "w"), config, params, None, source="test")
    io.export_hf(str(tmp_path / "w"), str(tmp_path / "out"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert np.abs(ours).max() > 1.0
    assert np.abs(_hf_logits(reloaded, tokens) - ours).max() < 1e-5 * np.abs(ours).max()


def test_sentencepiece_run_exports_a_tokenizer_autotokenizer_loads(tmp_path):
    """A run trained with llm_jax's SentencePiece gets tokenizer.json + config on export."""
    from hf_tokenizers import shakespeare_texts

    from llm_jax import config as config_lib
    from llm_jax.tokenizer import train_tokenizer

    sentencepiece = train_tokenizer(shakespeare_texts(2), vocab_size=400, max_chars=200_000)
    config = config_lib.apply_preset(config_lib.default_config(), "llama-tiny")
    config.model.vocab_size = 400
    model = Transformer(ModelConfig.from_config(config.model))
    params = init_params(model, _tokens(8))
    io.write_workdir(str(tmp_path / "w"), config, params, sentencepiece, source="test")
    files = io.export_hf(str(tmp_path / "w"), str(tmp_path / "out"))
    assert {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"} <= set(files)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "ROMEO:\n  But, soft! what light through yonder window breaks? 1597"
    assert auto(text, add_special_tokens=False)["input_ids"] == sentencepiece.encode(text)
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["eos_token_id"] == auto.eos_token_id == sentencepiece.eos_id


def test_checkpoint_fingerprints_in_blocks_equal_whole_arrays(monkeypatch):
    """Import memory: large leaves are fingerprinted in row blocks, with the same values."""
    import jax.numpy as jnp

    from llm_jax import checkpoint as ckpt_lib

    rng = np.random.default_rng(0)
    state = {
        "bf16": jnp.asarray(rng.standard_normal((7, 5, 3)), jnp.bfloat16),
        "f32": jnp.asarray(rng.standard_normal((11, 4)), jnp.float32),
        "flags": jnp.asarray(rng.random(13) > 0.5),
        "step": jnp.int32(5),
    }
    whole = ckpt_lib.fingerprints(state)
    monkeypatch.setattr(ckpt_lib, "_FINGERPRINT_BLOCK", 8)  # blocks of 1-2 rows
    assert ckpt_lib.fingerprints(state) == whole
    state["f32"] = state["f32"].at[10, 3].add(1.0)  # the last block's last element
    assert ckpt_lib.fingerprints(state)["f32"] != whole["f32"]
