"""DDP with 2 processes (gloo, CPU) through the real command line, on the tiny configs.

Every DDP run is ``python -m hepgen ...`` in a subprocess, as a user starts it; Lightning's
launcher starts rank 1 as a second process. The ranks report through :mod:`tests.ddp_probe`
(``<run dir>/probe/<stage>_rank<r>.pt``). Runs are module-scoped and shared between tests:

* ``calo_ddp``: CaloVAE, 2 ranks x batch 32, 3 steps, W&B offline;
* ``calo_single``: CaloVAE, 1 process x batch 64, 3 steps (the reference of ``calo_ddp``);
* ``calo_validate``: ``hepgen validate --ckpt_path last`` of ``calo_ddp``'s run with CaloMetrics,
  on 2 ranks and on 1 process;
* ``gan_ddp``: FoldingGAN, 2 ranks x batch 500, 2 steps (12 optimizer steps), strategy
  ``auto``, for which hepgen picks the GAN's ``ddp_find_unused_parameters_true`` (plain ``ddp``
  stops at the parameters of the network that a step does not update).

The single-process references call ``hepgen.cli.main`` in the test process (``hepgen_here``).
Both tiny configs evaluate with a batch as large as their validation split (one batch): under
2 ranks rank 1 would get no validation batch, which Lightning refuses. The runs here choose
batch sizes that give every rank one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hepgen.models.seeding import rank_seed
from tests.conftest import ROOT, tiny_args

#: One step's optimizer moves a weight by up to the learning rate (Adam, lr 1e-3): the
#: 2 x B vs 1 x 2B weights may differ by float32 summation order (3e-8 seen after 3 steps),
#: never by a step's worth.
WEIGHT_TOLERANCE = 1e-5
CALO_LATENT_DIM = 4  # tests/conf/calo_vae_tiny.yaml
CALO_STEPS = 3
PROBE = "tests.ddp_probe.WeightProbe"
#: Launcher variables of an enclosing job: the runs here must start as a fresh, single launch.
_LAUNCH_VARS = re.compile(
    r"^(SLURM_.*|TORCHELASTIC_.*|HEPGEN_RUN_DIR|RANK|LOCAL_RANK|WORLD_SIZE|LOCAL_WORLD_SIZE|GROUP_RANK|NODE_RANK|"
    r"MASTER_ADDR|MASTER_PORT|PL_GLOBAL_SEED|PL_SEED_WORKERS|WANDB_.*)$"
)


def hepgen(args: list[str], workdir: Path, wandb_mode: str = "disabled") -> str:
    """Run ``python -m hepgen *args`` from the repository root; its output, or the test fails."""
    env = {k: v for k, v in os.environ.items() if not _LAUNCH_VARS.match(k)}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE=wandb_mode, WANDB_DIR=str(workdir), HEPGEN_DEBUG="1")
    done = subprocess.run(
        [sys.executable, "-m", "hepgen", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"hepgen {' '.join(args[:1])} exited {done.returncode}:\n{output[-4000:]}")
    return output


def hepgen_here(args: list[str], workdir: Path) -> None:
    """``hepgen.cli.main(args)`` in this process, one thread, for the single-process references.

    The same entry point as ``python -m hepgen`` without a second interpreter start (about 10 s
    of a 2-core machine); one intra-op thread, as the subprocess ranks run (``OMP_NUM_THREADS=1``),
    so that float results are computed in the same order. The environment is restored
    afterwards, with what hepgen and Lightning set in it (``HEPGEN_RUN_DIR``, ``PL_GLOBAL_SEED``).
    """
    from hepgen.cli import main

    saved_env, saved_argv, threads = dict(os.environ), sys.argv, torch.get_num_threads()
    for name in [k for k in os.environ if _LAUNCH_VARS.match(k)]:
        del os.environ[name]
    os.environ.update(WANDB_MODE="disabled", WANDB_DIR=str(workdir), HEPGEN_DEBUG="1")
    sys.argv = ["hepgen"]
    torch.set_num_threads(1)
    try:
        main(args)
    finally:
        torch.set_num_threads(threads)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)


def ddp(strategy: str = "ddp") -> list[str]:
    return ["--trainer.accelerator", "cpu", "--trainer.strategy", strategy, "--trainer.devices", "2"]


def single() -> list[str]:
    return ["--trainer.accelerator", "cpu", "--trainer.strategy", "auto", "--trainer.devices", "1"]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def only_run_dir(root: Path, experiment: str) -> Path:
    (run_dir,) = [p for p in (root / experiment).iterdir() if re.fullmatch(r"v\d+", p.name)]
    return run_dir


def calo_fit_args(data_dir: Path, root: Path, batch_size: int) -> list[str]:
    """A CaloVAE fit of CALO_STEPS steps whose global noise follows the single-process stream."""
    return [
        *tiny_args("fit", data_dir, root),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(CALO_STEPS),
        "--data.init_args.batch_size", str(batch_size),
        # the probe first: it records each batch before SplitGlobalNoise reorders it
        "--trainer.callbacks+=" + PROBE,
        "--trainer.callbacks+=tests.ddp_probe.SplitGlobalNoise",
        "--trainer.callbacks.normals_per_event", str(CALO_LATENT_DIM),
    ]  # fmt: skip


# --- the shared runs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calo_ddp(calogan_dir, tmp_path_factory) -> dict:
    """CaloVAE on 2 ranks x batch 32 with a WandbLogger; what its run left right after the fit."""
    root = tmp_path_factory.mktemp("calo_ddp")
    logger = ["--trainer.logger", "WandbLogger", "--trainer.logger.project", "t"]
    hepgen([*calo_fit_args(calogan_dir, root, 32), *ddp(), *logger], root, wandb_mode="offline")
    versions = sorted(p.name for p in (root / "tiny").iterdir() if re.fullmatch(r"v\d+", p.name))
    return {
        "root": root,
        "run_dir": root / "tiny" / versions[0],
        # listed now: the validation runs below add files to this run directory
        "versions": versions,
        "wandb_runs": sorted(str(p.relative_to(root)) for p in root.rglob("offline-run-*") if p.is_dir()),
        # wherever each rank wrote (a rank with a run directory of its own wrote there)
        "ranks": [load(path) for path in sorted(root.rglob("probe/fit_rank*.pt"), key=lambda p: p.name)],
    }


@pytest.fixture(scope="module")
def calo_single(calogan_dir, tmp_path_factory) -> dict:
    """The same CaloVAE fit in one process with batch 64."""
    root = tmp_path_factory.mktemp("calo_single")
    hepgen_here([*calo_fit_args(calogan_dir, root, 64), *single()], root)
    return load(only_run_dir(root, "tiny") / "probe" / "fit_rank0.pt")


#: CaloVAE with the fluctuating sharing and the learnt latent density (its flow trains on the codes
#: and, with no warm-up, is refitted to them after the epoch's last step), layer 2's two brightest
#: cells drawn first as in the quickstart
CALO_FLOW = ["--model.init_args.sharing", "lognormal", "--model.init_args.latent_density", "flow",
             "--model.init_args.flow_transforms", "2", "--model.init_args.flow_hidden", "16",
             "--model.init_args.flow_refit_epochs", "2", "--model.init_args.kl_warmup_steps", "0",
             "--model.init_args.cells_given_energies", "true", "--model.init_args.brightest_cell_layers", "[layer_2]",
             "--model.init_args.brightest_cells", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def calo_flow_runs(calogan_dir, tmp_path_factory) -> dict:
    """CaloVAE with ``CALO_FLOW`` on 2 ranks x batch 32 and in 1 process x batch 64."""
    runs = {}
    for name, batch, launch in (("ddp", 32, ddp()), ("single", 64, single())):
        root = tmp_path_factory.mktemp(f"calo_flow_{name}")
        args = [*calo_fit_args(calogan_dir, root, batch), *CALO_FLOW, *launch]
        hepgen(args, root) if name == "ddp" else hepgen_here(args, root)
        runs[name] = [load(p) for p in sorted((only_run_dir(root, "tiny") / "probe").glob("fit_rank*.pt"))]
    return runs


@pytest.fixture(scope="module")
def calo_validate(calo_ddp) -> dict:
    """``hepgen validate --ckpt_path last`` on 2 ranks, then on 1 process: metrics.json and the probes.

    Batch 24 cuts the 60 validation events into 3 batches (24, 24, 12): rank 0 evaluates two,
    rank 1 one. CaloMetrics' ``max_events`` 40 (in total) keeps the first ceil(40 / 24) = 2
    batches in the single-process order, 48 events, one on each rank.
    """
    run_dir, root = calo_ddp["run_dir"], calo_ddp["root"]
    common = [
        "validate", "-c", str(run_dir / "config.yaml"), "--ckpt_path", "last",
        "--data.init_args.batch_size", "24", "--trainer.logger", "false",
        # CaloMetrics' numbers and metrics.json; its plots (rank 0 only) are left out for time
        "--trainer.callbacks", "tests.ddp_probe.CaloMetricsWithoutPlots", "--trainer.callbacks.max_events", "40",
        "--trainer.callbacks+=" + PROBE,
    ]  # fmt: skip
    result = {}
    for name in ("ddp", "single"):
        (run_dir / "metrics.json").unlink(missing_ok=True)
        for old in (run_dir / "probe").glob("validate_rank*.pt"):
            old.unlink()
        if name == "ddp":
            hepgen([*common, *ddp()], root)
        else:
            hepgen_here([*common, *single()], root)
        result[name] = {
            "metrics_json": json.loads((run_dir / "metrics.json").read_text())["val"],
            "ranks": [load(p) for p in sorted((run_dir / "probe").glob("validate_rank*.pt"))],
        }
    return result


@pytest.fixture(scope="module")
def gan_ddp(aidapt_dir, tmp_path_factory) -> list[dict]:
    """FoldingGAN on 2 ranks x batch 500, 2 steps, no validation: the two ranks' probe records."""
    root = tmp_path_factory.mktemp("gan_ddp")
    args = [
        "fit", "-c", str(ROOT / "tests" / "conf" / "aidapt_tiny.yaml"),
        "--data.init_args.data_dir", str(aidapt_dir), "--data.init_args.batch_size", "500",
        "--run.root", str(root), "--run.experiment", "tiny_gan",
        "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
        "--trainer.callbacks+=" + PROBE,
        *ddp("auto"),  # hepgen's choice for a GAN, as in the sbatch scripts
    ]  # fmt: skip
    hepgen(args, root)
    run_dir = only_run_dir(root, "tiny_gan")
    return [load(run_dir / "probe" / f"fit_rank{r}.pt") for r in (0, 1)]


@pytest.fixture(scope="module")
def sde_ddp(tmp_path_factory) -> dict:
    """SDEGAN (simultaneous updates, SWA from the first step) on 2 ranks x batch 32, 2 steps each."""
    root = tmp_path_factory.mktemp("sde_ddp")
    args = [
        "fit", "-c", str(ROOT / "tests" / "conf" / "sde_gan_tiny.yaml"),
        "--run.root", str(root), "--run.experiment", "tiny_sde",
        "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--model.init_args.swa_start", "0",
        "--trainer.callbacks+=" + PROBE,
        *ddp(),
    ]  # fmt: skip
    hepgen(args, root)
    versions = sorted(p.name for p in (root / "tiny_sde").iterdir() if re.fullmatch(r"v\d+", p.name))
    run_dir = root / "tiny_sde" / versions[0]
    return {"versions": versions, "ranks": [load(run_dir / "probe" / f"fit_rank{r}.pt") for r in (0, 1)]}


# --- 1. one run directory, one W&B run ----------------------------------------------------------
def test_ddp_fit_writes_one_run_directory_and_one_wandb_run(calo_ddp):
    ranks = calo_ddp["ranks"]
    assert [(r["rank"], r["world_size"], r["global_step"]) for r in ranks] == [(0, 2, CALO_STEPS), (1, 2, CALO_STEPS)]
    # rank 1 was handed rank 0's directory (HEPGEN_RUN_DIR), so it reserved no v1 of its own
    assert calo_ddp["versions"] == ["v0"]
    assert (calo_ddp["root"] / "tiny" / "latest").resolve() == calo_ddp["run_dir"].resolve()
    assert (calo_ddp["run_dir"] / "checkpoints" / "last.ckpt").is_file()
    assert not (calo_ddp["run_dir"] / ".lock").exists(), "the run lock outlived the fit"
    # only rank 0 creates the W&B run, inside the run directory
    assert len(calo_ddp["wandb_runs"]) == 1, calo_ddp["wandb_runs"]
    assert list((calo_ddp["run_dir"] / "wandb").glob("offline-run-*")), "the W&B run is not in the run directory"


# --- 2. identical weights on the ranks ------------------------------------------------------------
def test_calo_vae_ranks_hold_identical_weights(calo_ddp):
    rank0, rank1 = (r["state_dict"] for r in calo_ddp["ranks"])
    assert rank0.keys() == rank1.keys()
    differing = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not differing, f"weights differ between ranks after {CALO_STEPS} steps: {differing}"


def _is_batchnorm_statistic(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


def test_gan_ranks_hold_identical_weights(gan_ddp):
    rank0, rank1 = gan_ddp
    assert [(r["rank"], r["world_size"], r["global_step"]) for r in gan_ddp] == [(0, 2, 12), (1, 2, 12)]
    # BatchNorm running statistics are per-rank by nature (each rank normalises its own batch);
    # DDP copies rank 0's into every rank before each training forward, so after the last step
    # they differ. (The tiny config's default generator_bn: frozen should keep them at 0 and 1,
    # but Lightning never calls FoldingGAN.train() in fit, so the layers train.) Everything
    # else, the parameters of both networks and the fitted scalers, must be bit-identical.
    compared = [k for k in rank0["state_dict"] if not _is_batchnorm_statistic(k)]
    assert any(k.startswith("generator.") for k in compared) and any(k.startswith("discriminator.") for k in compared)
    differing = [k for k in compared if not torch.equal(rank0["state_dict"][k], rank1["state_dict"][k])]
    assert not differing, f"weights differ between ranks after 2 steps: {differing}"


def test_sde_gan_ranks_hold_identical_weights_and_swa_copies(sde_ddp):
    rank0, rank1 = sde_ddp["ranks"]
    assert sde_ddp["versions"] == ["v0"]
    # 128 training paths in 4 batches of 32: 2 simultaneous steps per rank, each steps 2 optimizers
    assert [(r["rank"], r["world_size"], r["global_step"]) for r in sde_ddp["ranks"]] == [(0, 2, 4), (1, 2, 4)]
    state0, state1 = rank0["state_dict"], rank1["state_dict"]
    assert int(state0["averages.generator.n_averaged"]) == 2
    assert any(k.startswith("averages.discriminator.module.") for k in state0)
    differing = [k for k in state0 if not torch.equal(state0[k], state1[k])]
    assert not differing, f"SDEGAN weights or SWA copies differ between ranks: {differing}"


# --- 3. 2 ranks x B = 1 process x 2B ----------------------------------------------------------------
def test_two_ranks_see_the_events_of_one_process_with_twice_the_batch(calo_ddp, calo_single):
    # the training sampler's contract: rank r holds rows r, r + 2, r + 4, ... of the 2B batch
    for step in range(CALO_STEPS):
        whole = calo_single["batches"][step]
        assert len(whole) == 64
        for r, record in enumerate(calo_ddp["ranks"]):
            assert torch.equal(record["batches"][step], whole[r::2]), f"step {step}, rank {r}"


def test_calo_vae_two_ranks_reach_the_weights_of_one_process(calo_ddp, calo_single):
    """Same events per step, gradients averaged by DDP: the same steps up to summation order.

    Both runs carry ``SplitGlobalNoise``: CaloVAE draws its reparametrisation noise from the
    global stream, which both ranks seed alike (so both draw the same rows for different
    events) and which DDP re-seeds after the model is built. Without it the two runs differ by
    6e-3 after 3 steps (9 % of the largest weight), a noise difference and not a DDP error.
    """
    # first step, before any update: the mean of the ranks' batch-mean losses is the 2B batch's mean
    rank_losses = [r["first_outputs"]["loss"] for r in calo_ddp["ranks"]]
    assert sum(rank_losses) / 2 == pytest.approx(calo_single["first_outputs"]["loss"], rel=1e-6)
    assert rank_losses[0] != rank_losses[1]  # different events, different noise: a real comparison
    ddp_weights, one_weights = calo_ddp["ranks"][0]["state_dict"], calo_single["state_dict"]
    worst = max(
        ((one_weights[k] - v).abs().max().item(), k) for k, v in ddp_weights.items() if v.is_floating_point()
    )
    assert worst[0] < WEIGHT_TOLERANCE, f"after {CALO_STEPS} steps {worst[1]} differs by {worst[0]:.2e}"
    # the weights did move, by much more than the tolerance: the steps are compared, not the start
    initial = calo_single["initial_state_dict"]
    moved = max((one_weights[k] - initial[k]).abs().max().item() for k in initial if initial[k].is_floating_point())
    assert moved > 100 * WEIGHT_TOLERANCE


def test_calo_vae_with_flow_prior_two_ranks_reach_the_weights_of_one_process(calo_flow_runs):
    """The flow fitted to the codes (and refitted to them after the epoch, on every rank) and the
    log-normal sharing with layer 2's brightest cells drawn first add no per-rank state: the ranks
    stay identical and match one process with twice the batch, flow weights included."""
    (rank0, rank1), (one,) = calo_flow_runs["ddp"], calo_flow_runs["single"]
    assert all(torch.equal(v, rank1["state_dict"][k]) for k, v in rank0["state_dict"].items())
    flow = [k for k in one["state_dict"] if k.startswith("latent_flow.") and one["state_dict"][k].is_floating_point()]
    assert flow
    worst = max((one["state_dict"][k] - v).abs().max().item() for k, v in rank0["state_dict"].items() if v.is_floating_point())
    assert worst < WEIGHT_TOLERANCE
    initial = one["initial_state_dict"]
    assert max((one["state_dict"][k] - initial[k]).abs().max().item() for k in flow) > 100 * WEIGHT_TOLERANCE


# --- 4. GAN noise differs between ranks -------------------------------------------------------------
def test_gan_noise_differs_between_ranks_and_is_reproducible(gan_ddp):
    noise0, noise1 = (r["first_noise"] for r in gan_ddp)
    assert noise0.shape == noise1.shape == (500, 8)
    assert not torch.allclose(noise0, noise1), "both ranks drew the same latent noise"
    # rank 1's stream is the documented one: reseeded from (seed 0, rank 1, step 0) at the start of training
    torch.manual_seed(rank_seed(0, 1, 0))
    assert torch.equal(noise1, torch.randn(500, 8))
    assert gan_ddp[0]["first_outputs"]["g_loss"] != gan_ddp[1]["first_outputs"]["g_loss"]


def test_sde_gan_noise_differs_between_ranks_and_is_reproducible(sde_ddp):
    noise0, noise1 = (r["first_noise"] for r in sde_ddp["ranks"])
    assert noise0.shape == noise1.shape == (32, 3)  # initial noise of the tiny config
    assert not torch.allclose(noise0, noise1)
    torch.manual_seed(rank_seed(0, 1, 0))
    assert torch.equal(noise1, torch.randn(32, 3))


# --- 5. a physics metric under DDP equals the single-process value -----------------------------------
def test_physics_metric_under_ddp_equals_single_process(calo_validate):
    on_two, on_one = calo_validate["ddp"], calo_validate["single"]
    assert [(r["rank"], r["world_size"]) for r in on_two["ranks"]] == [(0, 2), (1, 2)]
    assert [(r["rank"], r["world_size"]) for r in on_one["ranks"]] == [(0, 1)]
    # max_events counts events over all ranks: 2 batches of 24, not 2 per rank
    assert on_two["metrics_json"]["events"] == on_one["metrics_json"]["events"] == 48
    assert "ks/E_tot" in on_one["metrics_json"]
    assert on_two["metrics_json"] == pytest.approx(on_one["metrics_json"], rel=1e-12, abs=1e-12)


def test_every_rank_logs_the_synced_metrics(calo_validate):
    """CaloMetrics and CaloVAE's own val/neg_elbo: the same value on every rank and as in one process."""
    rank0, rank1 = (r["metrics"] for r in calo_validate["ddp"]["ranks"])
    one = calo_validate["single"]["ranks"][0]["metrics"]
    assert rank0 == rank1
    for key in ("val/ks/E_tot", "val/sep/response", "val/neg_elbo", "val/kl"):
        assert rank0[key] == pytest.approx(one[key], rel=1e-6), key
    assert rank0["val/ks/E_tot"] == pytest.approx(calo_validate["ddp"]["metrics_json"]["ks/E_tot"], rel=1e-6)


# --- anomaly detection: the classifier ensemble --------------------------------------------------
@pytest.fixture(scope="module")
def ad_runs(ad_study_dir, tmp_path_factory) -> dict:
    """WeakClassifier (3 members) for 3 steps and one validation with AnomalyMetrics: on 2 ranks x
    batch 250 and in 1 process x batch 500. Validation batch 500 gives each rank its batches."""
    runs = {}
    for name, batch, launch in (("ddp", 250, ddp()), ("single", 500, single())):
        root = tmp_path_factory.mktemp(f"ad_{name}")
        args = [
            "fit", "-c", str(ROOT / "tests" / "conf" / "ad_tiny.yaml"),
            "--data.init_args.data_dir", str(ad_study_dir), "--data.init_args.batch_size", str(batch),
            "--run.root", str(root), "--run.experiment", "ad",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
            "--trainer.callbacks+=" + PROBE, *launch,
        ]  # fmt: skip
        hepgen(args, root) if name == "ddp" else hepgen_here(args, root)
        run_dir = only_run_dir(root, "ad")
        runs[name] = {
            "ranks": [load(p) for p in sorted((run_dir / "probe").glob("fit_rank*.pt"))],
            "metrics_json": json.loads((run_dir / "metrics.json").read_text())["val"],
        }
    return runs


def test_classifier_ensemble_under_ddp_equals_one_process(ad_runs):
    """The ranks stay in sync and reach the weights of one process with twice the batch; the
    per-member validation losses (early stopping) and the SIC metrics are those of one process."""
    (rank0, rank1), (one,) = ad_runs["ddp"]["ranks"], ad_runs["single"]["ranks"]
    assert all(torch.equal(v, rank1["state_dict"][k]) for k, v in rank0["state_dict"].items())
    for step in range(3):  # the events of one 2B batch, split between the ranks
        assert torch.equal(torch.cat([rank0["batches"][step], rank1["batches"][step]]).sort(0).values,
                           one["batches"][step].sort(0).values)  # fmt: skip
    weights = [k for k, v in one["state_dict"].items() if k.startswith("net.") and v.is_floating_point()]
    worst = max((one["state_dict"][k] - rank0["state_dict"][k]).abs().max().item() for k in weights)
    assert worst < WEIGHT_TOLERANCE
    initial = one["initial_state_dict"]
    assert max((one["state_dict"][k] - initial[k]).abs().max().item() for k in weights) > 100 * WEIGHT_TOLERANCE
    torch.testing.assert_close(rank0["state_dict"]["best_loss"], one["state_dict"]["best_loss"], rtol=1e-6, atol=1e-9)
    assert rank0["metrics"]["val/loss"] == pytest.approx(one["metrics"]["val/loss"], rel=1e-6)
    assert rank0["metrics"]["val/auc"] == rank1["metrics"]["val/auc"]
    assert ad_runs["ddp"]["metrics_json"]["auc"] == pytest.approx(ad_runs["single"]["metrics_json"]["auc"], rel=1e-6)
    assert ad_runs["ddp"]["metrics_json"]["events"] == ad_runs["single"]["metrics_json"]["events"]


# --- anomaly detection: the conditional flow of Generate -------------------------------------------
@pytest.fixture(scope="module")
def flow_runs(ad_study_dir, tmp_path_factory) -> dict:
    """ConditionalFlow (2 x 16 MAF) for 3 steps and one validation, on 2 ranks x batch 250 and in
    1 process x batch 500, on the data control region of the small Toy NR study."""
    runs = {}
    for name, batch, launch in (("ddp", 250, ddp()), ("single", 500, single())):
        root = tmp_path_factory.mktemp(f"flow_{name}")
        args = [
            "fit", "-c", str(ROOT / "experiments" / "ad" / "generate_toy_nr.yaml"),
            "--data.init_args.data_dir", str(ad_study_dir), "--data.init_args.source", "real",
            "--data.init_args.signal_fraction", "0.05", "--data.init_args.batch_size", str(batch),
            "--model.init_args.transforms", "2", "--model.init_args.hidden", "16",
            "--run.root", str(root), "--run.experiment", "flow", "--trainer.logger", "false",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
            "--trainer.callbacks+=" + PROBE, *launch,
        ]  # fmt: skip
        hepgen(args, root) if name == "ddp" else hepgen_here(args, root)
        runs[name] = [load(p) for p in sorted((only_run_dir(root, "flow") / "probe").glob("fit_rank*.pt"))]
    return runs


def test_conditional_flow_under_ddp_equals_one_process(flow_runs):
    (rank0, rank1), (one,) = flow_runs["ddp"], flow_runs["single"]
    assert all(torch.equal(v, rank1["state_dict"][k]) for k, v in rank0["state_dict"].items())
    weights = [k for k, v in one["state_dict"].items() if k.startswith("flow.") and v.is_floating_point()]
    worst = max((one["state_dict"][k] - rank0["state_dict"][k]).abs().max().item() for k in weights)
    assert worst < WEIGHT_TOLERANCE
    initial = one["initial_state_dict"]
    assert max((one["state_dict"][k] - initial[k]).abs().max().item() for k in weights) > 100 * WEIGHT_TOLERANCE
    # the validation NLL of all events, which picks the kept epochs, is the one-process value
    assert rank0["metrics"]["val/nll"] == pytest.approx(one["metrics"]["val/nll"], rel=1e-6)
    assert rank0["metrics"]["val/nll"] == rank1["metrics"]["val/nll"]


# --- UVCGAN-S: two generators with EMA copies, three spectral-norm discriminators ---------------------
@pytest.fixture(scope="module")
def uvcgan_runs(sphenix_dir, tmp_path_factory) -> dict:
    """The tiny Stratified CycleGAN on 2 ranks x batch 4 for 2 steps (16 unpaired items) with one
    validation, then ``hepgen validate --ckpt_path last`` of that run on 2 ranks and in 1 process.

    The 12 validation mixtures make 3 batches of 4: rank 0 scores two, rank 1 one, and the
    decomposition metrics are computed on rank 0 over all 12, in the single-process order.
    """
    root = tmp_path_factory.mktemp("uvcgan_ddp")
    fit = [
        "fit", "-c", str(ROOT / "tests" / "conf" / "uvcgan_s_tiny.yaml"),
        "--data.init_args.data_dir", str(sphenix_dir),
        "--run.root", str(root), "--run.experiment", "tiny_uvcgan",
        "--trainer.callbacks+=" + PROBE, *ddp("ddp_find_unused_parameters_true"),
    ]  # fmt: skip
    hepgen(fit, root)
    versions = sorted(p.name for p in (root / "tiny_uvcgan").iterdir() if re.fullmatch(r"v\d+", p.name))
    run_dir = root / "tiny_uvcgan" / versions[0]
    result = {"versions": versions, "fit": [load(run_dir / "probe" / f"fit_rank{r}.pt") for r in (0, 1)]}
    validate = ["validate", "-c", str(run_dir / "config.yaml"), "--ckpt_path", "last", "--trainer.callbacks+=" + PROBE]
    for name, launch in (("ddp", ddp()), ("single", single())):
        (run_dir / "metrics.json").unlink()
        hepgen([*validate, *launch], root) if name == "ddp" else hepgen_here([*validate, *launch], root)
        result[name] = {
            "metrics_json": json.loads((run_dir / "metrics.json").read_text())["val"],
            "ranks": [load(p) for p in sorted((run_dir / "probe").glob("validate_rank*.pt"))],
        }
    return result


def test_uvcgan_ranks_hold_identical_weights_and_ema_copies(uvcgan_runs):
    rank0, rank1 = uvcgan_runs["fit"]
    assert uvcgan_runs["versions"] == ["v0"]
    # 16 items over 2 ranks in batches of 4: 2 steps per rank, each steps both optimizers
    assert [(r["rank"], r["world_size"], r["global_step"]) for r in uvcgan_runs["fit"]] == [(0, 2, 4), (1, 2, 4)]
    state0, state1 = rank0["state_dict"], rank1["state_dict"]
    ema = [k for k in state0 if k.startswith("averages.gen_ba.module.")]
    assert ema and int(state0["averages.gen_ba.n_averaged"]) == 3  # the initial copy and 2 updates
    # the discriminators' BatchNorm statistics are per rank (each normalises its own batch)
    compared = [k for k in state0 if not _is_batchnorm_statistic(k)]
    differing = [k for k in compared if not torch.equal(state0[k], state1[k])]
    assert not differing, f"UVCGAN-S weights or EMA copies differ between ranks: {differing[:5]}"
    moved = [k for k in ema if not torch.equal(state0[k], rank0["initial_state_dict"][k])]
    assert moved, "the EMA copies never moved"


def test_uvcgan_decomposition_metrics_under_ddp_equal_one_process(uvcgan_runs):
    on_two, on_one = uvcgan_runs["ddp"], uvcgan_runs["single"]
    assert on_two["metrics_json"]["events"] == on_one["metrics_json"]["events"] == 12
    for key in ("l1_sig", "l1_bkg", "jes", "jer_cal", "median_rho/jer_cal", "jet/jer_r04", "area/jet/jer_r04", "jet/jes_cal_r04"):
        assert on_two["metrics_json"][key] == pytest.approx(on_one["metrics_json"][key], rel=1e-6, nan_ok=True), key
    rank0, rank1 = on_two["ranks"]
    assert rank0["metrics"]["val/l1_sig"] == rank1["metrics"]["val/l1_sig"] == pytest.approx(on_one["metrics_json"]["l1_sig"])


# --- anomaly detection: Morph, a transform trained on a frozen base flow ------------------------------
@pytest.fixture(scope="module")
def morph_runs(ad_study_dir, tmp_path_factory) -> dict:
    """MorphFlow (T: 2 x 8) for 3 steps and one validation, on 2 ranks x batch 250 and in 1 process x
    batch 500, on the data control region of the small Toy NR study; its base is morph_base_toy_nr.yaml
    (2 x 16) fitted here for 3 steps to the MC, in one process."""
    from hepgen.run import resolve_checkpoint

    study = ["--data.init_args.data_dir", str(ad_study_dir), "--data.init_args.source", "real",
             "--data.init_args.signal_fraction", "0.05", "--trainer.logger", "false",
             "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"]  # fmt: skip
    base_root = tmp_path_factory.mktemp("morph_base")
    hepgen_here([
        "fit", "-c", str(ROOT / "experiments" / "ad" / "morph_base_toy_nr.yaml"), *study, "--run.root", str(base_root),
        "--model.init_args.transforms", "2", "--model.init_args.hidden", "16", *single(),
    ], base_root)  # fmt: skip
    base = resolve_checkpoint("run:ad/morph_base_toy_nr@latest:last", base_root)
    runs = {"base": load(base)["state_dict"]}
    for name, batch, launch in (("ddp", 250, ddp()), ("single", 500, single())):
        root = tmp_path_factory.mktemp(f"morph_{name}")
        args = [
            "fit", "-c", str(ROOT / "experiments" / "ad" / "morph_toy_nr.yaml"), *study,
            "--data.init_args.batch_size", str(batch), "--model.init_args.base_ckpt", str(base),
            "--model.init_args.transforms", "2", "--model.init_args.hidden", "8",
            "--run.root", str(root), "--run.experiment", "morph", "--trainer.callbacks+=" + PROBE, *launch,
        ]  # fmt: skip
        hepgen(args, root) if name == "ddp" else hepgen_here(args, root)
        runs[name] = [load(p) for p in sorted((only_run_dir(root, "morph") / "probe").glob("fit_rank*.pt"))]
    return runs


def test_morph_under_ddp_equals_one_process_and_leaves_the_base_alone(morph_runs):
    (rank0, rank1), (one,) = morph_runs["ddp"], morph_runs["single"]
    assert all(torch.equal(v, rank1["state_dict"][k]) for k, v in rank0["state_dict"].items())
    weights = [k for k, v in one["state_dict"].items() if k.startswith("top.") and v.is_floating_point()]
    worst = max((one["state_dict"][k] - rank0["state_dict"][k]).abs().max().item() for k in weights)
    assert worst < WEIGHT_TOLERANCE
    initial = one["initial_state_dict"]
    assert max((one["state_dict"][k] - initial[k]).abs().max().item() for k in weights) > 100 * WEIGHT_TOLERANCE
    # the frozen base on every rank is the base checkpoint's, bit for bit
    base = {f"base.{k}": v for k, v in morph_runs["base"].items()}
    for state in (rank0["state_dict"], one["state_dict"]):
        assert base.keys() == {k for k in state if k.startswith("base.")}
        assert all(torch.equal(state[k], v) for k, v in base.items())
    assert rank0["metrics"]["val/nll"] == pytest.approx(one["metrics"]["val/nll"], rel=1e-6)
    assert rank0["metrics"]["val/nll"] == rank1["metrics"]["val/nll"]
    assert rank0["metrics"]["val/base_nll"] == pytest.approx(one["metrics"]["val/base_nll"], rel=1e-6)


def test_a_resumed_ddp_run_continues_every_ranks_noise_exactly(calogan_dir, tmp_path):
    """CaloVAE on 2 ranks: 2 epochs straight == 1 epoch, then ``--ckpt_path last`` to 2. The
    checkpoint holds each rank's random stream; rank 1 reseeded at the resume (from seed, rank
    and step) would draw other reparametrisation noise and end with other weights."""
    base = [*tiny_args("fit", calogan_dir, tmp_path), "--data.init_args.batch_size", "32",
            "--trainer.limit_train_batches", "4", *ddp()]  # fmt: skip
    hepgen([*base, "--trainer.max_epochs", "2", "--run.version", "straight"], tmp_path)
    hepgen([*base, "--trainer.max_epochs", "1", "--run.version", "split"], tmp_path)
    split = tmp_path / "tiny" / "split"
    hepgen(["fit", "-c", str(split / "config.yaml"), "--ckpt_path", "last", "--trainer.max_epochs", "2"], tmp_path)
    straight = torch.load(tmp_path / "tiny" / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == straight["global_step"] == 8
    assert len(resumed["callbacks"]["RNGStateCheckpoint"]["ranks"]) == 2
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
