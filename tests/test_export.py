"""hepgen export: generator graphs in ONNX, run by ONNX Runtime as torch runs them, with a sidecar
that is all a caller needs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import hepgen.export as export
from hepgen.cli import main
from hepgen.models import CaloVAE
from hepgen.models.aidapt import FoldingGAN, UnfoldingGAN
from hepgen.physics.calo_geometry import LAYER_KEYS
from hepgen.synth.calogan import ZERO_SUPPRESSION_MEV
from tests.conftest import full_calo_vae, tiny_args
from tests.test_cli_runs import _one_line_error

REPO = Path(__file__).resolve().parents[1]
#: Inputs per parity check: the issue's 1,000 and more, a batch of one, and one larger than the
#: example batch the graph was traced with.
PARITY_BATCHES = (1, 1000, 3 * export.EXAMPLE_BATCH + 5)


def _full_calo_vae() -> CaloVAE:
    """The tests' CaloVAE with every generation path, with a recorded training energy range."""
    model = full_calo_vae()
    model.incident_energy_range_gev = (1.0, 100.0)
    return model


def _run_both(graph: export.GeneratorGraph, batch: int, seed: int):
    """(torch outputs, ONNX Runtime outputs) of ``graph`` on one batch of valid random inputs."""
    proto, program = export.to_onnx(graph) if not hasattr(graph, "_onnx") else graph._onnx
    graph._onnx = (proto, program)  # trace once per graph
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = graph.example_inputs(batch, seed)
    with torch.no_grad():
        expected = [t.numpy() for t in program.module()(*inputs)]
    got = session.run(None, {spec.name: x.numpy() for spec, x in zip(graph.inputs, inputs)})
    return inputs, expected, got


def _assert_parity(expected: list[np.ndarray], got: list[np.ndarray], threshold: float) -> None:
    """The issue's bar: the same zero pattern, and relative differences of at most 1e-5 where an
    output is above the readout ``threshold`` (in absolute value)."""
    for a, b in zip(expected, got):
        assert a.shape == b.shape and b.dtype == np.float32
        assert np.array_equal(a == 0, b == 0)
        above = np.abs(a) > threshold
        assert above.any()
        relative = np.abs(a[above] - b[above]) / np.abs(a[above])
        assert relative.max() <= 1e-5, relative.max()


def test_calo_vae_graph_gives_the_same_showers_in_onnx_runtime_and_torch():
    graph = _full_calo_vae().export_graphs()[0]
    assert [s.name for s in graph.inputs][:2] == ["incident_energy_gev", "particle"]
    for batch in PARITY_BATCHES:
        _, expected, got = _run_both(graph, batch, seed=batch)
        _assert_parity(expected, got, ZERO_SUPPRESSION_MEV)
        hit = sum(int((e > 0).sum()) for e in expected)
        assert hit > 0.05 * batch * 504  # showers, not empty layers


def test_float64_graph_without_exact_scalars_misses_the_bar(monkeypatch):
    """What the scalar restoration is for: torch.onnx writes a float64 graph's Python constants
    through float32, and the draws in the distributions' tails amplify that beyond 1e-5."""
    monkeypatch.setattr(export, "_restore_exact_scalars", lambda model, program: None)
    graph = _full_calo_vae().export_graphs()[0]
    _, expected, got = _run_both(graph, 1000, seed=1000)
    with pytest.raises(AssertionError):
        _assert_parity(expected, got, ZERO_SUPPRESSION_MEV)


def _assert_same_showers_up_to_float32(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Showers (B, cells) MeV of the same random numbers computed two ways, one of them in float32
    eagerly: the same hit cells in all but 1 % of the showers (those where a uniform sat at its cell's
    hit probability) and, in the others, energies within 0.1 % but for the rare cell drawn far in a
    Gaussian's tail, where float32's inverse CDF loses digits (within 1 % there)."""
    same_hits = ((got > 0) == (expected > 0)).all(1)
    assert float(same_hits.float().mean()) >= 0.99
    a, b = got[same_hits], expected[same_hits]
    relative = (a - b).abs() / b.abs().clamp_min(1e-3)
    assert float((relative > 1e-3).float().mean()) <= 1e-4 and float(relative.max()) <= 1e-2, float(relative.max())


def test_calo_vae_graph_draws_the_showers_of_generate():
    """The graph is the model: its showers from given random numbers are those of
    CaloVAE.showers_from_noise in float32 eagerly, up to float32 rounding."""
    model = _full_calo_vae()
    for precision in ("float64", "float32"):
        graph = model.export_graphs(export.compute_dtype(precision))[0]
        inputs, _, got = _run_both(graph, 500, seed=7)
        with torch.no_grad():
            eager = model.showers_from_noise(inputs[0], inputs[1], dict(zip(graph.module.noise_keys, inputs[2:])))
        for key, b in zip(model.layer_keys, got):
            _assert_same_showers_up_to_float32(torch.from_numpy(b).flatten(1), eager[key].flatten(1))


def test_folding_and_unfolding_graphs_match_torch_and_the_models(folding_ckpt):
    folding = FoldingGAN.load_from_checkpoint(folding_ckpt).eval()
    unfolding = UnfoldingGAN(folding_ckpt=str(folding_ckpt), noise_dim=8, generator_widths=(32, 32),
                             discriminator_widths=(32, 16)).eval()  # fmt: skip
    for model in (folding, unfolding):
        graph = model.export_graphs()[0]
        for batch in PARITY_BATCHES:
            inputs, expected, got = _run_both(graph, batch, seed=batch)
            _assert_parity(expected, got, threshold=0.0)
        # the physical map of the model itself, with the same noise
        with torch.no_grad():
            if model is folding:
                vertex, s, noise = inputs
                direct = model.d_scaler.inverse(model.fold_scaled(model.v_scaler(vertex), model.s_scaler(s), noise=noise))
            else:
                s, noise = inputs
                direct = model.v_scaler.inverse(model.unfold_scaled(model.s_scaler(s), noise=noise))
        torch.testing.assert_close(torch.from_numpy(got[0]), direct.float(), rtol=1e-4, atol=1e-5)
    ranges = [spec.valid_range for spec in folding.export_graphs()[0].inputs[:2]]
    assert len(ranges[0]) == 4 and all(lo < hi for lo, hi in ranges[0]) and ranges[1][0] < ranges[1][1]


# the sidecar and the ONNX file alone, in a Python that never imports hepgen (nor torch)
CALLER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, onnxruntime
    folder, out = sys.argv[1], sys.argv[2]
    info = json.load(open(f"{folder}/calo_vae_generator.json"))
    session = onnxruntime.InferenceSession(f"{folder}/{info['model_file']}", providers=["CPUExecutionProvider"])
    rng, batch, feed = np.random.default_rng(0), 300, {}
    for spec in info["inputs"]:
        shape = [batch if d == "batch" else d for d in spec["shape"]]
        if spec.get("distribution") == "normal(0, 1)":
            feed[spec["name"]] = rng.standard_normal(shape).astype(spec["dtype"])
        elif spec.get("distribution") == "uniform[0, 1)":
            feed[spec["name"]] = rng.random(shape).astype(spec["dtype"])
        else:  # a condition: log-uniform over its valid range
            low, high = spec["valid_range"]
            feed[spec["name"]] = np.exp(rng.uniform(np.log(low), np.log(high), shape)).astype(spec["dtype"])
    outputs = dict(zip([o["name"] for o in info["outputs"]], session.run(None, feed)))
    for spec in info["outputs"]:
        assert list(outputs[spec["name"]].shape) == [batch if d == "batch" else d for d in spec["shape"]]
    assert "hepgen" not in sys.modules and "torch" not in sys.modules
    np.savez(out, **feed, **outputs)
    """
)


def test_cli_exports_a_trained_run_that_a_caller_without_hepgen_runs(calogan_dir, tmp_path):
    root = tmp_path / "runs"
    main(tiny_args("fit", calogan_dir, root, "--trainer.max_epochs", "1"))
    run = root / "tiny" / "v0"
    main(tiny_args("export", calogan_dir, root, "--ckpt_path", "last"))
    folder = run / "export" / "last"
    assert sorted(p.name for p in folder.iterdir()) == ["calo_vae_generator.json", "calo_vae_generator.onnx"]
    assert not any(p.name.startswith(".") for p in (run / "export").iterdir())  # no partial folder left
    info = json.loads((folder / "calo_vae_generator.json").read_text())
    energy = info["inputs"][0]
    assert energy["name"] == "incident_energy_gev" and energy["unit"] == "GeV"
    with __import__("h5py").File(calogan_dir / "eplus.hdf5") as f:
        all_energies = f["energy"][:]
    low, high = energy["valid_range"]  # the training split's energies
    assert all_energies.min() <= low < high <= all_energies.max()
    assert info["checkpoint"]["sha256"] == export.file_sha256(run / "checkpoints" / "last.ckpt")
    assert [o["unit"] for o in info["outputs"]] == ["MeV"] * 3

    result = subprocess.run([sys.executable, "-c", CALLER, str(folder), str(tmp_path / "caller.npz")],
                            capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    caller = np.load(tmp_path / "caller.npz")
    # the caller's showers are the trained model's for the inputs it drew
    model = CaloVAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    noise = {k: torch.from_numpy(caller["noise_" + k.replace("/", "_")]) for k in model.generation_noise(1)}
    with torch.no_grad():
        expected = model.showers_from_noise(torch.from_numpy(caller["incident_energy_gev"]), None, noise)
    for key in LAYER_KEYS:
        got = torch.from_numpy(caller[key]).flatten(1)
        assert (got >= 0).all() and got.sum() > 0
        _assert_same_showers_up_to_float32(got, expected[key].flatten(1))


def test_bad_exports_are_one_line_and_leave_nothing_behind(calogan_dir, tmp_path, capsys, monkeypatch):
    root = tmp_path / "runs"
    main(tiny_args("fit", calogan_dir, root, "--trainer.max_epochs", "1"))
    run = root / "tiny" / "v0"
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    line = _one_line_error(capsys, tiny_args("export", calogan_dir, root), monkeypatch)
    assert "needs --ckpt_path" in line
    line = _one_line_error(capsys, tiny_args("export", calogan_dir, root, "--ckpt_path", "last", "--format", "tflite"),
                           monkeypatch)  # fmt: skip
    assert "--format" in line and "onnx" in line
    line = _one_line_error(capsys, tiny_args("export", calogan_dir, root, "--ckpt_path", "last",
                                             "--model.init_args.hidden", "48"), monkeypatch)  # fmt: skip
    assert "another model configuration" in line
    # a method without a generator graph, given a checkpoint file from outside any run
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    line = _one_line_error(capsys, ["export", "-c", str(REPO / "tests" / "conf" / "sde_gan_tiny.yaml"),
                                    "--run.root", str(root), "--ckpt_path", str(foreign),
                                    "--out", str(tmp_path / "sde")], monkeypatch)  # fmt: skip
    assert "model SDEGAN" in line and "no generator graph" in line
    assert not (root / "sde_gan_tiny").exists() and not (tmp_path / "sde").exists()
    # the same file for a CaloVAE without --out: nowhere to write by default
    line = _one_line_error(capsys, tiny_args("export", calogan_dir, root, "--ckpt_path", str(foreign)), monkeypatch)
    assert "--out" in line
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    # a checkpoint from elsewhere, exported where --out says: no run folder is left for it
    copied = tmp_path / "copied.ckpt"
    copied.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    main(tiny_args("export", calogan_dir, root, "--ckpt_path", str(copied), "--out", str(tmp_path / "copied")))
    assert (tmp_path / "copied" / "calo_vae_generator.onnx").is_file()
    assert sorted(p.name for p in (root / "tiny").iterdir()) == sorted(["v0", "latest"])
    # an export is never overwritten
    main(tiny_args("export", calogan_dir, root, "--ckpt_path", "last", "--out", str(tmp_path / "gen")))
    written = (tmp_path / "gen" / "calo_vae_generator.onnx").read_bytes()
    line = _one_line_error(capsys, tiny_args("export", calogan_dir, root, "--ckpt_path", "last",
                                             "--out", str(tmp_path / "gen")), monkeypatch)  # fmt: skip
    assert "already exists" in line
    assert (tmp_path / "gen" / "calo_vae_generator.onnx").read_bytes() == written
