"""``hepgen data list`` and ``hepgen data make NAME --out DIR [--events N] [--seed S]``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MadeDataset:
    """One kind of made data: what it is, how to make it, and its extra command-line options."""

    description: str
    make: Callable[..., list]
    options: dict[str, dict] = field(default_factory=dict)
    events: int = 10_000  # the default of --events


def _make_calogan(out, events, seed, particles, progress=True):
    from hepgen.synth.calogan import make_calogan

    return make_calogan(out, events=events, seed=seed, particles=particles, progress=progress)


def _make_calochallenge(out, events, seed, datasets, progress=True):
    from pathlib import Path

    from hepgen.synth.calochallenge import file_name, make_calochallenge

    if len(set(datasets)) != len(datasets):
        raise ValueError(f"--datasets: need distinct datasets, got {datasets}.")
    paths = [Path(out) / file_name(d) for d in datasets]
    for path in paths:  # fail before making any; make_calochallenge checks again
        if path.exists():
            raise FileExistsError(f"{path} exists; hepgen never overwrites a data file. Remove it or choose another path.")
    return [make_calochallenge(p, d, events=events, seed=seed, progress=progress) for p, d in zip(paths, datasets)]


def _make_aidapt(out, events, seed, samples, files, progress=True):
    from hepgen.synth.aidapt import make_aidapt

    return make_aidapt(out, events=events, seed=seed, samples=samples, n_files=files, progress=progress)


def _make_csv_series(out, events, seed, progress=True):
    from hepgen.synth.series import make_csv_series

    return make_csv_series(out, events=events, seed=seed, progress=progress)


def _make_geolife(out, events, seed, users, progress=True):
    from hepgen.synth.series import make_geolife

    return make_geolife(out, events=events, seed=seed, users=users, progress=progress)


def _make_ad_toy(out, events, seed, kind, signal_fractions, seeds, noise_features, progress=True):
    from hepgen.synth.ad_toy import make_ad_toy

    return make_ad_toy(
        out, kind=kind, events=events, signal_fractions=signal_fractions, seeds=seeds,
        noise_features=noise_features, seed=seed, progress=progress,
    )


def _make_sphenix(out, events, seed, centrality, progress=True):
    from hepgen.synth.sphenix import make_sphenix

    return make_sphenix(out, events=events, seed=seed, centrality=tuple(centrality), progress=progress)


def _make_toy_mix(out, events, seed, size, progress=True):
    from hepgen.synth.toy_mix import make_toy_mix

    written = make_toy_mix(out, events=events, seed=seed, size=size, progress=progress)
    return sorted({p.parent for p in written if p.suffix == ".png"}) + [p for p in written if p.suffix == ".json"]


MADE_DATASETS: dict[str, MadeDataset] = {
    "calogan": MadeDataset(
        "Calorimeter showers in the CaloGAN HDF5 format (<particle>.hdf5: layer_0/1/2 in MeV, "
        "energy in GeV, overflow), e+ / gamma / pi+ in the CaloGAN Pb/LAr geometry.",
        _make_calogan,
        {"--particles": {"nargs": "+", "default": ["eplus"], "choices": ["eplus", "gamma", "piplus"]}},
    ),
    "calochallenge": MadeDataset(
        "Calorimeter showers in the CaloChallenge 2022 HDF5 format (dataset_<d>_1.hdf5: incident_energies (N,1) "
        "and showers (N, voxels), MeV), from the CaloGAN shower Monte Carlo in the ATLAS barrel (ds1: photons, "
        "pions; 15 energies 2^8-2^22 MeV) or the W/Si stack (ds2, ds3: electrons, log-uniform 1 GeV-1 TeV).",
        _make_calochallenge,
        {"--datasets": {"nargs": "+", "default": ["1-photons"], "choices": ["1-photons", "1-pions", "2", "3"]}},
    ),
    "aidapt": MadeDataset(
        "gamma p -> pi+ pi- p events (CLAS g11, E_gamma 3.0-3.8 GeV) in the A(i)DAPT 16-column .npy layout, "
        "through a toy CLAS detector: <sample>_vertex_<k>.npy and <sample>_detector_<k>.npy (accepted events "
        "only, row-paired, k < --files), <sample>_generated.npz (all generated events + accepted flag) and "
        "<sample>_made.json, for samples ps (phase space) and realistic (rho/Delta mixture). "
        "--events counts generated events per sample, before acceptance (the toy detector keeps about half of ps).",
        _make_aidapt,
        {
            "--samples": {"nargs": "+", "default": ["ps", "realistic"], "choices": ["ps", "realistic"]},
            "--files": {"type": int, "default": 4, "help": "vertex/detector file pairs per sample (default 4)"},
        },
    ),
    "csv_series": MadeDataset(
        "An hourly multi-channel seasonal series in the Beijing air-quality CSV layout (air_quality.csv: header "
        "PM2.5,PM10,SO2,NO2,CO,O3,TEMP,PRES,DEWP,RAIN,WSPM, NA for missing values; daily and yearly cycles, "
        "correlated AR noise) and air_quality.made.json. --events counts rows (hours).",
        _make_csv_series,
        events=17_520,
    ),
    "geolife": MadeDataset(
        "GPS trajectories in the Geolife 1.3 layout (Data/<user>/Trajectory/<start>.plt, 6 header lines, altitude "
        "-777 = invalid): walkers, cyclists and cars around Beijing sampled every 1-5 s, and geolife_made.json. "
        "--events counts trajectories.",
        _make_geolife,
        {"--users": {"type": int, "default": 5, "help": "user folders the trajectories are dealt into (default 5)"}},
        events=100,
    ),
    "ad_toy": MadeDataset(
        "Weak-supervision anomaly-detection toys with the optimal classifier known, in the layout of "
        "hep-lbdl/non-resonant-AD-extrapolation: mc_events.npz, ideal_bkg_events.npz, seed<g>/data_<s>.npz "
        "(data = background + injected signal at S/B s, with labels), test_SR.npz, fullsup_SR.npz and ad_toy.json "
        "(toy parameters, optimal max SIC). --kind nr: 2 context variables, SR c1 > 1 and c2 > 1; --kind r: a "
        "resonance in m ~ Exp(1), SR 1.0 <= m <= 1.5. --events counts data background events in the SR; the CR "
        "keeps a random tenth of its events.",
        _make_ad_toy,
        {
            "--kind": {"default": "nr", "choices": ["nr", "r"], "help": "nr (non-resonant) or r (resonant); default nr"},
            "--signal-fractions": {"nargs": "+", "type": float, "default": [0.0, 0.002, 0.005, 0.01, 0.02],
                                   "help": "injected S/B in the SR, one data file each (default %(default)s)"},
            "--seeds": {"nargs": "+", "type": int, "default": [1, 2, 3, 4, 5],
                        "help": "injection seeds, one folder seed<g> each (default %(default)s)"},
            "--noise-features": {"type": int, "default": 0,
                                 "help": "extra N(0, 1) columns carrying no information (default 0)"},
        },
        events=100_000,
    ),
    "sphenix": MadeDataset(
        "sPHENIX calorimeter events in the UVCGAN-S layout (Zenodo 17783990): train/{background,signal,embed}.h5, "
        "val/embed.h5, test/embed.h5, dataset data (N, 24, 64) float16 GeV towers (24 eta rows over |eta| < 1.1, "
        "64 phi columns), LZF, one chunk per event; PYTHIA-like jets (jet30, p+p 200 GeV), HIJING-like central "
        "Au+Au background, embed = signal + background exactly; test holds JEWEL-like quenched jets; made val/test "
        "also store the truth as datasets signal and background; and sphenix_made.json. --events counts train "
        "mixtures (train background and signal as many, val and test a fifth each).",
        _make_sphenix,
        {"--centrality": {"nargs": 2, "type": float, "default": [0.0, 10.0], "metavar": ("LOW", "HIGH"),
                          "help": "background centrality range, percent (default 0 10, the real cent0 files)"}},
        events=20_000,
    ),
    "toy_mix": MadeDataset(
        "A toy image mix in the AFHQ layout (in place of cats and dogs): {train,val}/{blobs,stripes}/NNNNN.png, RGB "
        "images of soft coloured blobs and of coloured gratings/rings, and toy_mix_made.json; the datamodule mixes "
        "blur(0.5 a + 0.5 b) at load time. --events counts train images per family (val a fifth).",
        _make_toy_mix,
        {"--size": {"type": int, "default": 32, "help": "image side in pixels (default 32; the reference uses 256)"}},
        events=2_000,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hepgen data", description="Make data in the real published formats.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="list what hepgen can make")
    make = verbs.add_parser("make", help="write made data into a folder")
    kinds = make.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, spec in MADE_DATASETS.items():
        sub = kinds.add_parser(name, help=spec.description, description=spec.description)
        sub.add_argument("--out", required=True, help="folder to write into (existing files are never overwritten)")
        sub.add_argument("--events", type=int, default=spec.events, help="events to make: per file (calogan, calochallenge), generated per sample before acceptance (aidapt), rows (csv_series), trajectories (geolife), data background in the SR (ad_toy), training mixtures (sphenix), images per family (toy_mix); default %(default)s")
        sub.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        for flag, kwargs in spec.options.items():
            sub.add_argument(flag, **kwargs)
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    if args.verb == "list":
        for name, spec in MADE_DATASETS.items():
            print(f"{name:12s} {spec.description}")
        return
    spec = MADE_DATASETS[args.name]
    extra = {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_")) for flag in spec.options}
    paths = spec.make(args.out, args.events, args.seed, **extra)
    for path in paths:
        print(f"wrote {path}")
