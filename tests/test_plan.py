"""`llm-jax plan`: the real train step, compiled for TPU topologies on this CPU machine.

Compiling needs the libtpu wheel (`pip install -e .[tpu]`, as CI does); without it
those tests skip. Each compile takes seconds to a minute on 2 cores (TPU code
generation grows with the model's width), so every topology is compiled once per
module and its report shared by the tests that read it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys

import pytest

from llm_jax import config as config_lib
from llm_jax import flops, plan
from llm_jax.cli import plan as plan_cli
from llm_jax.config import ConfigError

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason="libtpu is not installed: pip install -e .[tpu] (CI installs it)"
)
LLAMA_7B_CONFIG = "experiments/configs/llama2_7b.py"
# GPT-2 small's 12 layers at 1/6 the width, and a vocabulary that still pads (1000 -> 1024
# rows): its 50,257 rows were half the compile.
GPT2_NARROW = dict(d_model=128, n_heads=2, d_ff=512, vocab_size=1000)
# Plans report the memory and FLOPs of the program users' runs compile.
pytestmark = pytest.mark.usefixtures("optimized_xla_module")

if HAVE_LIBTPU:
    plan.compile_only_process()  # JAX_PLATFORMS is cpu already (conftest); quiets libtpu


def _config(preset: str, seq_len: int, batch_size: int, **model) -> config_lib.ConfigDict:
    config = config_lib.apply_preset(config_lib.default_config(), preset)
    config.model.update(dtype="bfloat16", **model)
    config.data.seq_len = seq_len
    config.train.batch_size = batch_size
    return config


# --- no compiling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, topology_name, chip_config, chips, host",
    [
        ("v4-8", "v4:2x2x1", "megacore", 4, (2, 2, 1)),
        ("v5p-256", "v5:4x4x8", "megacore", 128, (2, 2, 1)),
        ("v5e-8", "v5e:2x4", "default", 8, (2, 4, 1)),
        ("v5litepod-256", "v5e:16x16", "default", 256, (2, 2, 1)),
        ("v6e-256", "v6e:16x16", "default", 256, (2, 2, 1)),
    ],
)
def test_topology_names_map_to_libtpu_strings(name, topology_name, chip_config, chips, host):
    topology = plan.get_topology(name)
    assert (topology.topology_name, topology.chip.chip_config) == (topology_name, chip_config)
    assert (topology.chips_per_slice, topology.chips_per_host) == (chips, host)
    assert plan.get_topology(name, num_slices=2).num_chips == 2 * chips


def test_chip_hbm_and_unknown_names():
    hbm = {name: chip.hbm_bytes // plan.GiB for name, chip in plan.CHIPS.items()}
    assert hbm == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
    with pytest.raises(ConfigError, match="unknown TPU topology 'v5p-7'.*v5p-256"):
        plan.get_topology("v5p-7")
    with pytest.raises(ConfigError, match="num-slices"):
        plan.get_topology("v5p-8", num_slices=0)


def test_without_libtpu_the_command_prints_the_install_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # `import libtpu` now raises ImportError
    code = plan_cli.main(
        ["llm-jax plan", "--config=experiments/configs/base.py", "--topology=v5p-8"]
    )
    assert code == 1
    assert "pip install -e .[tpu]" in capsys.readouterr().err


def test_the_advice_leaves_out_what_the_config_already_does():
    mesh = {"data": 1, "fsdp": 128, "tensor": 1}
    message = plan._does_not_fit(130 * plan.GiB, 95 * plan.GiB, 128, mesh, remat="full")
    assert message.startswith("does not fit: needs 130.00 GiB of 95.00 GiB per device.")
    assert "mesh.fsdp" not in message and "remat" not in message
    assert "--config.train.microbatches" in message
    message = plan._does_not_fit(
        0, 95 * plan.GiB, 128, {**mesh, "data": 128, "fsdp": 1}, remat="none"
    )
    assert "needs more than the HBM" in message
    assert "--config.mesh.fsdp=128" in message and "--config.model.remat=full" in message


# --- compiled -------------------------------------------------------------------------------


# Unscanned, no micro-batches: XLA counts a while-loop body once, so only an unrolled
# step's FLOPs compare with the model's count.
UNROLLED_TINY = dict(preset="llama-tiny", seq_len=256, batch_size=16, scan_layers=False)


@pytest.fixture(scope="module")
def reports() -> dict[str, plan.PlanReport]:
    """Two compiles shared by the tests below: GPT-2 small's layout, narrowed (TPU code
    generation grows with width; the 7B plan is the full-size compile), FSDP over a
    16-chip v5p slice; and on one v4 host, data parallel, the unrolled tiny model whose
    FLOPs test_xla_flops_agree_with_the_model_count checks."""
    gpt2 = _config("gpt2-small", seq_len=64, batch_size=64, **GPT2_NARROW)
    gpt2.mesh.update(data=1, fsdp=-1)
    return {
        "v5p-32": plan.plan(gpt2, plan.get_topology("v5p-32")),
        "v4-8": plan.plan(_config(**UNROLLED_TINY), plan.get_topology("v4-8")),
    }


@needs_libtpu
@pytest.mark.parametrize(
    "name, chip, chips, mesh",
    [
        ("v5p-32", "v5p", 16, {"data": 1, "fsdp": 16, "tensor": 1}),
        ("v4-8", "v4", 4, {"data": 4, "fsdp": 1, "tensor": 1}),
    ],
)
def test_the_state_fits_replicated_or_divided_by_fsdp(reports, name, chip, chips, mesh):
    report = reports[name]
    assert (report.chip, report.devices, report.mesh) == (chip, chips, mesh)
    memory = report.memory
    assert memory.fits and 0 < memory.total < memory.hbm
    # Arguments are the state (donated: aliased by the outputs) plus the batch.
    assert memory.arguments >= report.state_bytes_per_device
    assert memory.aliased >= report.state_bytes_per_device - 1024
    per_chip = report.params_allocated / mesh["fsdp"]  # data parallel: replicated
    # Norm scales and output biases stay replicated: 10,752 of the 2.6M, 6.5% over the share.
    assert per_chip <= report.params_per_device < 1.1 * per_chip
    text = plan.format_report(report)
    assert f"topology  {name}: {chips} {chip} chips" in text and "fits      yes" in text


@needs_libtpu
def test_parameter_count_is_llm_jax_flops(reports):
    counts = flops.param_counts(_config("gpt2-small", 64, 64, **GPT2_NARROW).model)
    report = reports["v5p-32"]
    assert report.params_total == counts.total
    assert report.params_allocated == counts.total + counts.vocab_padding


@needs_libtpu
def test_xla_flops_agree_with_the_model_count(reports):
    # The v4 host's unrolled tiny model; no Pallas kernels here (XLA attention).
    config, report = _config(**UNROLLED_TINY), reports["v4-8"]
    ratio = report.xla_flops_per_step / report.model_flops_per_step
    # The model count ignores norms, softmax, the loss and the optimizer: a few %.
    assert 0.95 < ratio < 1.10, ratio
    assert report.model_flops_per_step == (
        flops.flops_per_token(config.model, 256).detailed * 16 * 256
    )
    assert report.step_seconds_at_peak == pytest.approx(
        report.model_flops_per_step / (4 * plan.CHIPS["v4"].peak_flops)
    )
    assert report.tokens_per_second_at_mfu == pytest.approx(0.4 * report.tokens_per_second_at_peak)


@needs_libtpu
@pytest.mark.slow
def test_llama2_7b_fits_with_fsdp_on_v5p_256():
    config = _config("llama2-7b", seq_len=256, batch_size=128)
    config.mesh.update(data=1, fsdp=-1)
    report = plan.plan(config, plan.get_topology("v5p-256"))
    assert report.mesh == {"data": 1, "fsdp": 128, "tensor": 1}
    assert report.memory.fits, plan.format_report(report)
    # FSDP: each chip holds ~1/128 of the 6.7B parameters (norm scales replicated).
    assert report.params_total > 6.7e9
    assert (
        report.params_allocated / 128
        <= report.params_per_device
        < 1.01 * (report.params_allocated / 128)
    )


@needs_libtpu
def test_llama2_7b_unsharded_on_v5e_8_does_not_fit(capsys):
    code = plan_cli.main(
        [
            "llm-jax plan",
            f"--config={LLAMA_7B_CONFIG}",
            "--topology=v5e-8",
            "--json",
            "--config.mesh.data=-1",
            "--config.mesh.fsdp=1",
            "--config.data.seq_len=256",
            "--config.train.batch_size=8",
            "--config.model.remat=none",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["memory"]["fits"] is False
    assert report["memory"]["total"] > 100 * plan.GiB  # 7B params + Adam, replicated
    message = report["message"]
    assert message.startswith("does not fit: needs ") and " of 16.00 GiB per device" in message
    assert "--config.mesh.fsdp=8" in message and "--config.model.remat=full" in message


@needs_libtpu
def test_two_slice_v5e_256_puts_data_across_slices(tmp_path):
    topology = plan.get_topology("v5e-256", num_slices=2)
    config = _config("llama-tiny", seq_len=64, batch_size=512)
    config.mesh.update(data=2, fsdp=-1)
    mesh = plan.topology_mesh(config.mesh, topology)
    slice_of = [{d.slice_index for d in row.flat} for row in mesh.devices]
    assert slice_of == [{0}, {1}]
    path = tmp_path / "step.pkl"
    report = plan.plan(config, topology, executable_path=str(path))
    assert report.devices == 512 and report.mesh == {"data": 2, "fsdp": 256, "tensor": 1}
    assert report.memory.fits and report.executable_path == str(path)
    assert path.stat().st_size > 10_000
    assert json.loads(json.dumps(dataclasses.asdict(report)))["num_slices"] == 2
