"""Benchmark of an exported CaloVAE: showers/s under ONNX Runtime against torch, on a CPU.

    python benchmarks/export.py                       # the quickstart's sizes, freshly initialised
    python benchmarks/export.py --ckpt runs/calo_vae/quickstart/v0/checkpoints/last.ckpt

The protocol of ``benchmarks/calo_vae.py`` (the CaloChallenge timing protocol): ms per shower at
batch 1, 100 and 10,000, each repeat one timed block of calls after two warm-up calls, mean ± std
over the repeats, the variants in alternating repeats so a load change hits them alike. Timed per
variant:

- ``onnxruntime, float64 graph`` and ``float32 graph``: ``InferenceSession.run`` of the graph
  ``hepgen export`` writes (``--precision float64``, the default, and ``float32``), with the random
  inputs drawn by numpy in the timed block, as a caller draws them;
- ``torch, CaloVAE.generate``: eagerly in float32 (what ``hepgen test`` uses);
- ``torch, compiled``: ``CompiledShowerGenerator`` with the model's ``generation_dtype`` (bfloat16
  in the quickstart), what ``hepgen predict`` uses with ``compile_generation``.

Also printed: the wall time of each export (trace, conversion, check).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import calo_vae as calo_bench  # noqa: E402  (benchmarks/calo_vae.py: config, made data, machine)

from hepgen import export  # noqa: E402
from hepgen.models.calo_vae import CaloVAE, CompiledShowerGenerator  # noqa: E402

BATCHES = calo_bench.PROTOCOL_CALLS  # {batch: calls per repeat}


def onnx_runner(graph: export.GeneratorGraph, threads: int):
    """``run(energy_gev)`` of the graph's ONNX file in ONNX Runtime, drawing its noise with numpy."""
    import onnxruntime

    proto, _ = export.to_onnx(graph)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    noise = [s for s in graph.inputs if s.distribution]

    def run(energy: np.ndarray):
        feed = {"incident_energy_gev": energy}
        for spec in noise:
            shape = (len(energy), *spec.shape)
            normal = spec.distribution == "normal(0, 1)"
            feed[spec.name] = (rng.standard_normal(shape) if normal else rng.random(shape)).astype(np.float32)
        return session.run(None, feed)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=calo_bench.DEFAULT_CONFIG)
    parser.add_argument("--ckpt", type=Path, help="a trained CaloVAE checkpoint (default: fresh, the config's sizes)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: the usable cores)")
    args = parser.parse_args()
    cores = calo_bench.usable_cores()
    threads = args.threads or cores
    torch.set_num_threads(threads)
    cfg = calo_bench.load_config(args.config)
    if args.ckpt:
        model = CaloVAE.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    else:
        tensors = calo_bench.make_training_data(2000, cfg["particles"][0], cfg["seed"])
        model = calo_bench.Models(CaloVAE, cfg["model_args"], tensors, cfg["seed"]).new().eval()
    print(f"# hepgen benchmark: exported CaloVAE, ONNX Runtime against torch, {threads} threads")
    print(f"machine : {calo_bench.cpu_model()} | {cores} usable cores | load "
          f"{calo_bench.format_load(calo_bench.load_average())} at start")
    import onnxruntime

    print(f"software: torch {torch.__version__} | onnxruntime {onnxruntime.__version__}")
    print(f"model   : {args.ckpt or 'fresh, sizes of ' + str(args.config.relative_to(REPO))}; "
          f"generation_dtype {model.hparams.generation_dtype}")

    runners = {}
    for precision in ("float64", "float32"):
        t0 = time.perf_counter()
        graph = model.export_graphs(export.compute_dtype(precision))[0]
        runners[f"onnxruntime, {precision} graph"] = ("numpy", onnx_runner(graph, threads))
        print(f"export ({precision}): {time.perf_counter() - t0:.1f} s")
    gen = torch.Generator().manual_seed(0)
    runners["torch, CaloVAE.generate (float32, eager)"] = ("torch", lambda e: model.generate(e, generator=gen))
    compiled = CompiledShowerGenerator(model)
    name = f"torch, CompiledShowerGenerator ({model.hparams.generation_dtype})"
    runners[name] = ("torch", lambda e: compiled(e, generator=gen))

    energies = {b: 1.0 + 99.0 * torch.rand((b, 1), generator=torch.Generator().manual_seed(b)) for b in BATCHES}
    times = {name: {b: [] for b in BATCHES} for name in runners}
    for _ in range(args.repeats):
        for name, (kind, run) in runners.items():
            for batch, calls in BATCHES.items():
                energy = energies[batch].numpy() if kind == "numpy" else energies[batch]
                for _ in range(2 if not times[name][batch] else 0):  # warm-up (and compilation)
                    run(energy)
                t0 = time.perf_counter()
                for _ in range(calls):
                    run(energy)
                times[name][batch].append((time.perf_counter() - t0) / (calls * batch))

    print(f"\n## ms per shower at batch {' / '.join(f'{b:,}' for b in BATCHES)}; showers/s at 10,000 "
          f"(mean ± std over {args.repeats} repeats)")
    reference = statistics.fmean(1.0 / v for v in times["torch, CaloVAE.generate (float32, eager)"][10_000])
    for name, per_batch in times.items():
        ms = " / ".join(f"{statistics.fmean(per_batch[b]) * 1e3:.4f}" for b in BATCHES)
        rates = [1.0 / v for v in per_batch[10_000]]
        rate, spread = statistics.fmean(rates), statistics.stdev(rates) if len(rates) > 1 else 0.0
        print(f"  {name}: {ms} ms; {rate:,.0f} ± {spread:,.0f} showers/s ({rate / reference:.2f} x eager torch)")


if __name__ == "__main__":
    main()
