"""Calorimeter-shower metrics and the CaloGAN-format prediction writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from callbacks.base import PhysicsMetric, gather_predictions
from hepgen.io.calogan import write_calogan
from hepgen.metrics.classifier import two_sample_auc
from hepgen.metrics.distributions import ks_statistic, separation_power
from hepgen.physics.calo_geometry import LAYER_KEYS
from hepgen.run import next_free_path
from hepgen.physics.calo_observables import OBSERVABLE_NAMES, compute_observables
from hepgen.plotting import histogram_overlays, mean_shower_images, response_vs_energy


def classifier_features(
    showers: dict[str, np.ndarray], energy_gev: np.ndarray, layers: tuple[str, ...] = LAYER_KEYS
) -> np.ndarray:
    """Voxels of ``layers`` normalised by the incident energy, log-scaled, plus log10 E_inc: (N, 505)
    for all three CaloGAN layers.

    Normalising by E_inc removes the trivial scale so that the classifier judges shapes and
    fluctuations; the log scale (1e-6 floor) makes the sparse tails visible to it.
    """
    e_inc_mev = 1000.0 * energy_gev.reshape(-1, 1)
    voxels = np.concatenate([showers[k].reshape(len(e_inc_mev), -1) for k in layers], axis=1)
    return np.concatenate([np.log10(voxels / e_inc_mev + 1e-6), np.log10(e_inc_mev / 1000.0)], axis=1)


class CaloMetrics(PhysicsMetric):
    """CaloGAN observables, real vs generated at the same incident energies, in physical units.

    Reads the model's ``evaluation_samples``: ``layer_0`` (B, 3, 96), ``layer_1`` (B, 12, 12),
    ``layer_2`` (B, 12, 6) in MeV and ``energy`` (B, 1) in GeV (the same on both sides).

    For every observable of :mod:`hepgen.physics.calo_observables` it logs the KS distance
    (``ks/<name>``) and the CaloChallenge separation power (``sep/<name>``); per layer the
    occupancy of reference and model and their difference in percentage points
    (``sparsity_<l>_ref``, ``sparsity_<l>_gen``, ``sparsity_<l>_diff_pp``); the mean response;
    ``nonfinite_fraction``, the generated showers with a NaN or inf cell. In ``test`` it also
    trains a real-vs-generated classifier on the voxels and logs its AUC on a held-out split
    (``classifier_auc``; 0.5 means indistinguishable), and the same on each layer's voxels alone
    (``classifier_auc_<layer>``).

    Plots: overlaid histograms of all observables, mean shower images per layer, response vs
    incident energy.

    Args:
        threshold_mev: cells above this energy count as hit in the occupancy.
        classifier_epochs: training epochs of the test classifier.
        **kwargs: see :class:`callbacks.base.PhysicsMetric`.
    """

    def __init__(self, threshold_mev: float = 0.0, classifier_epochs: int = 30, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold_mev = threshold_mev
        self.classifier_epochs = classifier_epochs

    def _observables(self, showers: dict) -> dict[str, np.ndarray]:
        return compute_observables(showers, showers["energy"], self.threshold_mev)

    def compute(self, reference, generated, stage):
        ref, gen = self._observables(reference), self._observables(generated)
        values: dict[str, float] = {}
        for name in OBSERVABLE_NAMES:
            values[f"ks/{name}"] = ks_statistic(ref[name], gen[name])
            values[f"sep/{name}"] = separation_power(ref[name], gen[name])
        for layer in range(len(LAYER_KEYS)):
            occ_ref, occ_gen = ref[f"sparsity_{layer}"].mean(), gen[f"sparsity_{layer}"].mean()
            values[f"sparsity_{layer}_ref"] = occ_ref
            values[f"sparsity_{layer}_gen"] = occ_gen
            values[f"sparsity_{layer}_diff_pp"] = 100.0 * (occ_gen - occ_ref)
        # showers with a NaN or inf cell: a numerically broken generator, never physics
        cells = np.concatenate([np.asarray(generated[k]).reshape(len(generated[k]), -1) for k in LAYER_KEYS], axis=1)
        values["nonfinite_fraction"] = float((~np.isfinite(cells).all(axis=1)).mean())
        values["response_ref"] = ref["response"].mean()
        values["response_gen"] = gen["response"].mean()
        if stage == "test":
            # all layers together (the number), then each layer alone: which one gives a
            # generated shower away
            for name, layers in [("classifier_auc", LAYER_KEYS)] + [(f"classifier_auc_{k}", (k,)) for k in LAYER_KEYS]:
                values[name] = two_sample_auc(
                    classifier_features(reference, reference["energy"], layers),
                    classifier_features(generated, generated["energy"], layers),
                    epochs=self.classifier_epochs,
                )
        return values

    def figures(self, reference, generated, stage):
        ref, gen = self._observables(reference), self._observables(generated)
        e_inc = reference["energy"].reshape(-1)
        return {
            "observables": histogram_overlays(ref, gen, title=f"CaloGAN observables ({stage})"),
            "mean_showers": mean_shower_images(reference, generated),
            "response": response_vs_energy(e_inc, ref["response"], e_inc, gen["response"]),
        }


class CaloGANWriter(BasePredictionWriter):
    """Write ``predict`` output as a CaloGAN HDF5 file in ``<run dir>/predictions/``.

    The file is ``<particle>.hdf5`` (the datamodule's ``predict_particle``; ``<particle>.1.hdf5``,
    ... if that exists: nothing is overwritten) and holds the incident energies and generated
    cells in MeV, so ``CaloGANDataModule(data_dir=<run dir>/predictions)`` reads it back.

    Args:
        filename: the file name instead of ``<particle>.hdf5``.
    """

    def __init__(self, filename: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        local = gather_predictions(trainer, predictions, predictions[0].keys())
        if local is None:
            return
        particle = getattr(trainer.datamodule, "predict_particle", "showers")
        filename = self.filename or f"{particle}.hdf5"
        path = next_free_path(Path(trainer.default_root_dir) / "predictions" / filename)
        write_calogan(path, local, attrs={"hepgen_generated_by": type(pl_module).__name__})
        print(f"hepgen: wrote {len(local['energy'])} generated showers to {path}")
