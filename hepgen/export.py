"""Trained generators as ONNX graphs, for fast simulation in C++ (Geant4's Par04 example, ROOT's
TMVA SOFIE, ONNX Runtime in an experiment's framework).

A method that generates describes each of its graphs as a :class:`GeneratorGraph`: a module whose
``forward`` takes the conditions and the random numbers as tensors (B, ...) and returns what it
generates in physical units, with the name, shape, unit and meaning of every input and output.
:func:`export_onnx` writes each graph as ``<name>.onnx`` beside ``<name>.json``, the sidecar a caller
reads: the inputs to feed (conditions with their training range, noise with its distribution), the
outputs, the hepgen version, the checkpoint and its metrics. The random numbers are inputs, so a
caller chooses them and a result is reproducible.

Precision. Generation draws by inversion from uniforms (a cell is hit when its uniform is below its
hit probability; the further a uniform sits in a Gaussian's tail, the more its value moves with the
probability), so two float32 implementations of the same graph, whose matrix products and
exponentials round differently in the last bit, disagree by more than 1e-5 on about 1 % of a
CaloVAE's cells. The default graph therefore computes in float64 (its inputs and outputs are
float32): ONNX Runtime then reproduces torch to about 1e-11. ``precision="float32"`` gives a graph
about twice as fast under ONNX Runtime that agrees to float32 rounding except at those cells.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from hepgen import __version__
from hepgen.errors import ConfigValueError, RunDirectoryError

Precision = Literal["float64", "float32"]
#: ONNX operator set of the written graphs (ONNX Runtime 1.16 and later, ROOT SOFIE read it).
OPSET = 18
#: Events per example batch the graphs are traced with; every batch size runs (the dimension is dynamic).
EXAMPLE_BATCH = 64


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a graph: (batch, *shape) of ``dtype``.

    ``distribution`` is set for the random numbers a caller draws (``normal(0, 1)`` or
    ``uniform[0, 1)``), ``valid_range`` for the conditions: the range the model was trained on,
    (low, high), or one (low, high) per component of a vector.
    """

    name: str
    shape: tuple[int, ...]
    unit: str = ""
    description: str = ""
    dtype: str = "float32"
    distribution: str | None = None
    valid_range: tuple | list | None = None

    def example(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """A batch of valid values: noise from its distribution, conditions uniform in their range."""
        shape = (batch, *self.shape)
        if self.dtype == "int64":
            high = int(self.valid_range[1]) + 1 if self.valid_range else 1
            return torch.randint(0, high, shape, generator=generator)
        if self.distribution == "normal(0, 1)":
            return torch.randn(shape, generator=generator)
        bounds = torch.tensor(self.valid_range if self.valid_range else (0.0, 1.0))  # (2,) or one pair per component
        low, high = bounds[..., 0], bounds[..., 1]
        return (low + (high - low) * torch.rand(shape, generator=generator)).float()


@dataclass
class GeneratorGraph:
    """A generator as a graph: ``module(*inputs) -> tuple(outputs)``, in the order of the specs."""

    name: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    description: str
    #: what a caller should know besides the tensors (e.g. settings of the model not in the graph)
    notes: list[str] = field(default_factory=list)

    def example_inputs(self, batch: int = EXAMPLE_BATCH, seed: int = 0) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return tuple(spec.example(batch, generator) for spec in self.inputs)


def compute_dtype(precision: Precision) -> torch.dtype:
    if precision not in ("float64", "float32"):
        raise ConfigValueError(f"--precision {precision}: choose float64 or float32.")
    return getattr(torch, precision)


def trace(graph: GeneratorGraph) -> torch.export.ExportedProgram:
    """The graph as torch.export traces it, with a dynamic batch dimension (torch runs it too)."""
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        return torch.export.export(
            graph.module.eval(), graph.example_inputs(), dynamic_shapes=(tuple({0: batch} for _ in graph.inputs),)
        )


def to_onnx(graph: GeneratorGraph, program: torch.export.ExportedProgram | None = None):
    """``(onnx.ModelProto, ExportedProgram)`` of one graph: the ONNX model and the traced program
    decomposed into the operators the model is written in, which torch runs as the reference."""
    import onnx

    program = program or trace(graph)
    onnx_program = torch.onnx.export(
        program,
        input_names=[spec.name for spec in graph.inputs],
        output_names=[spec.name for spec in graph.outputs],
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    # the program as the exporter decomposed it into the graph's operators (what torch then runs)
    program = onnx_program.exported_program
    model = onnx_program.model_proto
    _restore_exact_scalars(model, program)
    onnx.checker.check_model(model)
    return model, program


def _restore_exact_scalars(model, program: torch.export.ExportedProgram) -> None:
    """Give the graph's float64 scalar constants their exact values.

    torch.onnx writes each ``aten.scalar_tensor`` of the traced program (a Python constant of the
    model's code: 1000 MeV/GeV, sqrt 2, the inverse normal CDF's coefficients) through float32, so
    in a float64 graph they differ from torch's in the 8th digit, which the draws in a
    distribution's tails amplify to 1e-4. The initializers keep the traced nodes' names.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    exact = {
        node.name: node.args[0]
        for node in program.graph.nodes
        if node.target is torch.ops.aten.scalar_tensor.default and isinstance(node.args[0], float)
    }
    for tensor in model.graph.initializer:
        if tensor.name in exact and tensor.data_type == onnx.TensorProto.DOUBLE:
            tensor.CopyFrom(numpy_helper.from_array(np.array(exact[tensor.name], dtype=np.float64), tensor.name))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_source(path: Path, checkpoint: dict, run_dir: Path | None, config_files) -> dict:
    """Where an export came from, for its sidecar: the checkpoint (path, SHA-256, epoch, step), the
    config, and the run's recorded metrics (``metrics.json``) when it has any."""
    metrics_file = None if run_dir is None else Path(run_dir) / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file is not None and metrics_file.is_file() else None
    return {
        "checkpoint": {
            "path": str(Path(path).resolve()),
            "sha256": file_sha256(path),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
        },
        "config": [str(c) for c in (config_files or [])],
        "metrics": metrics,
    }


def sidecar(graph: GeneratorGraph, model_file: str, precision: Precision, source: dict) -> dict:
    """The JSON a caller reads beside ``model_file``."""

    def described(spec: TensorSpec) -> dict:
        entry = {k: v for k, v in asdict(spec).items() if v not in (None, "")}
        entry["shape"] = ["batch", *spec.shape]
        return entry

    return {
        "model_file": model_file,
        "format": f"onnx (opset {OPSET})",
        "graph": graph.name,
        "description": graph.description,
        "precision": f"computes in {precision}; inputs and outputs as their dtype says",
        "inputs": [described(spec) for spec in graph.inputs],
        "outputs": [described(spec) for spec in graph.outputs],
        "notes": graph.notes,
        "hepgen_version": __version__,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **source,
    }


def check_exportable(model: nn.Module) -> None:
    """Raise, naming the method, if ``model`` has no generator graph to export."""
    if not hasattr(model, "export_graphs"):
        raise ConfigValueError(
            f"model {type(model).__name__}: hepgen export has no generator graph for this method "
            "(CaloVAE, FoldingGAN and UnfoldingGAN have one)."
        )


def export_onnx(model: nn.Module, out: Path, precision: Precision = "float64", source: dict | None = None) -> list[Path]:
    """Write every generator graph of ``model`` to the new folder ``out``: ``<graph>.onnx`` and
    ``<graph>.json`` each. Returns the ONNX files.

    ``out`` must not exist (nothing is overwritten); the files are written to a hidden folder
    beside it, which becomes ``out`` only when all are complete.
    """
    check_exportable(model)
    out = Path(out)
    if out.exists():
        raise RunDirectoryError(f"--out {out}: already exists; hepgen export never overwrites. Give another --out.")
    graphs = model.export_graphs(compute_dtype(precision))
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    partial.mkdir(parents=True)
    try:
        import onnx

        written = []
        for graph in graphs:
            proto, _ = to_onnx(graph)
            onnx.save(proto, partial / f"{graph.name}.onnx")
            info = sidecar(graph, f"{graph.name}.onnx", precision, source or {})
            (partial / f"{graph.name}.json").write_text(json.dumps(info, indent=2, default=_json_value) + "\n")
            written.append(out / f"{graph.name}.onnx")
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return written


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {value!r}")
