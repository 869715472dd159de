"""``hepgen ad run``: a weak-supervision study, many small trainings, as one resumable command.

A study trains each method at every point of a scan, the injected signal fraction S/B times the
injection seed, and compares how well the methods find the signal. One method at one point is a
chain of *stages*; a stage is one experiment config run through the ordinary ``hepgen`` commands
(``fit``, then ``test`` and/or ``predict`` on its last checkpoint), in its own run directory::

    <root>/<study>/<method>/<point>/<stage>/      e.g. runs/ad_study/toy_nr/reweight/s0.01_g3/weights/

A later stage reads an earlier one's output through a placeholder in its arguments: ``{weights}``
is the run directory of the stage named ``weights`` at the same point. The study YAML::

    study: toy_nr                      # the folder name under root
    root: runs/ad_study
    data:                              # the study's data folder, passed to every stage
      data_dir: data/ad_toy_nr_scan
      source: made                     # made up front for every (S/B, seed) when missing
      toy_kind: nr
      events: 100000                   # hepgen.synth.ad_toy.make_ad_toy arguments
    signal_fractions: [0.0, 0.002, 0.005, 0.01, 0.02]
    injection_seeds: [1, 2, 3, 4, 5]
    common_args: {trainer.logger: false}  # every stage's command line
    methods:
      reweight:
        stages:
          - name: weights
            config: experiments/ad/reweight_toy_nr.yaml
            commands: [fit, predict]
          - name: classifier
            config: experiments/ad/ideal_toy_nr.yaml
            commands: [fit, test, predict]
            args: {data.init_args.method: template,
                   data.init_args.template: "{weights}/predictions/template.npz"}

A method may narrow the scan (``signal_fractions:`` or ``injection_seeds:`` of its own, e.g.
Supervised, which does not depend on S/B). A stage that depends on no point (Morph's base flow on
the simulation) says ``shared: true`` and is trained once, in ``<method>/shared/``. A stage that
another method already trains at the same point says ``reuse: <that method>`` and nothing else: it
is that method's stage of the same name, run once and read by both (Generate and Morph weight their
templates with the same context weights). With ``folds: k`` every point runs k times, one per test
fold (``data.init_args.test_fold``), and the report scores the k folds' out-of-fold predictions
together (k-fold testing). Its ``report_stage`` (default: the last) is the SR classifier whose
``test`` metrics the report collects; a ``closure_stage`` adds the control-region closure AUC. A
stage with ``signal_fractions:`` of its own runs only at those S/B values (the closure test at S/B =
0, where it is a test of the method and not of the injected signal).

Resuming: every command that finishes leaves a marker (``<stage>/.study/<command>.done``); a rerun
skips those, continues a killed ``fit`` from its ``last.ckpt``, and redoes the rest. A killed
stage therefore costs at most the epochs since its last checkpoint. ``--jobs N --job K`` runs the
points whose index is K modulo N (a SLURM array: ``--job $SLURM_ARRAY_TASK_ID``); a shared or
reused stage that two jobs reach at once is trained by one of them while the other waits (a lock
file beside the stage). ``hepgen ad report`` collects whatever has finished into the report
(:mod:`hepgen.study_report`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hepgen.checkpoints import run_checkpoints
from hepgen.errors import HepgenError
from hepgen.run import slurm_run_id
from hepgen.run_lock import waiting_lock
from hepgen.slurm import clear_time_limit, note_time_limit, requeue_job, time_limit_reached, wait_to_be_stopped

COMMANDS = ("fit", "validate", "test", "predict")
STUDY_KEYS = {"study", "root", "data", "signal_fractions", "injection_seeds", "common_args", "methods"}
METHOD_KEYS = {"stages", "signal_fractions", "injection_seeds", "folds", "report_stage", "closure_stage"}
STAGE_KEYS = {"name", "config", "commands", "args", "ckpt_path", "shared", "signal_fractions", "reuse"}
DATA_KEYS = {"data_dir", "source", "toy_kind", "events", "noise_features", "cr_keep", "test_background",
             "test_signal", "fullsup_background", "fullsup_signal", "seed"}  # fmt: skip
PLACEHOLDER = re.compile(r"\{(\w+)\}")


class StudyError(HepgenError):
    """A study file that cannot run as written, or a stage that failed (names the stage and its log)."""


# --- the study file ---------------------------------------------------------------------------------
@dataclass
class Stage:
    """One experiment config run through ``commands`` (``fit`` first, if at all)."""

    name: str
    config: Path
    commands: tuple[str, ...] = ("fit", "test")
    args: dict = field(default_factory=dict)
    ckpt_path: str = "last"
    #: trained once for all points of the method (e.g. Morph's base flow on the simulation, which
    #: holds no injected signal), at the method's first (S/B, seed), in ``<method>/shared/<stage>``
    shared: bool = False
    #: the S/B values the stage runs at (``None``: all of its method's), e.g. the closure test,
    #: which only means something without injected signal; no other stage may read its output
    signal_fractions: tuple[float, ...] | None = None
    #: the method whose stage of the same name this one is, at the same point (trained once)
    reuse: str | None = None

    def runs_at(self, point: Point) -> bool:
        return self.signal_fractions is None or any(
            point.signal_fraction is not None and math.isclose(point.signal_fraction, s) for s in self.signal_fractions
        )


@dataclass
class Method:
    name: str
    stages: list[Stage]
    signal_fractions: list[float]
    injection_seeds: list[int]
    report_stage: str
    closure_stage: str | None = None
    #: k of k-fold testing (``data.init_args.test_folds``): each point runs k times, one per test
    #: fold, and the report scores the k folds' predictions together
    folds: int | None = None

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)


@dataclass(frozen=True)
class Point:
    """A method at one (S/B, injection seed[, test fold]); each is ``None`` when the study does not scan it."""

    method: str
    signal_fraction: float | None
    injection_seed: int | None
    fold: int | None = None

    @property
    def label(self) -> str:
        parts = []
        if self.signal_fraction is not None:
            parts.append(f"s{self.signal_fraction:g}")
        if self.injection_seed is not None:
            parts.append(f"g{self.injection_seed}")
        if self.fold is not None:
            parts.append(f"f{self.fold}")
        return "_".join(parts) or "all"


@dataclass
class Study:
    name: str
    root: Path
    data: dict
    methods: dict[str, Method]
    common_args: dict
    source: Path

    @property
    def folder(self) -> Path:
        return self.root / self.name

    def points(self) -> list[Point]:
        return [
            Point(m.name, s, g, f)
            for m in self.methods.values()
            for s in (m.signal_fractions or [None])
            for g in (m.injection_seeds or [None])
            for f in (range(m.folds) if m.folds else [None])
        ]

    def point_dir(self, point: Point) -> Path:
        return self.folder / point.method / point.label

    def resolve(self, point: Point, stage: Stage) -> tuple[Point, Stage]:
        """The stage that really runs for ``stage`` at ``point``: itself, or the one it reuses."""
        if stage.reuse is None:
            return point, stage
        other = self.methods[stage.reuse]
        return Point(other.name, point.signal_fraction, point.injection_seed, point.fold), other.stage(stage.name)

    def stage_point(self, point: Point, stage: Stage) -> Point:
        """The point a stage runs at: its own, the reused method's, or a shared stage's method's first."""
        point, stage = self.resolve(point, stage)
        if not stage.shared:
            return point
        method = self.methods[point.method]
        first = Point(point.method, (method.signal_fractions or [None])[0], (method.injection_seeds or [None])[0],
                      0 if method.folds else None)  # fmt: skip
        return first

    def stage_dir(self, point: Point, stage: Stage) -> Path:
        point, stage = self.resolve(point, stage)
        if stage.shared:
            return self.folder / point.method / "shared" / stage.name
        return self.point_dir(point) / stage.name

    def run_dir(self, point: Point, stage_name: str) -> Path:
        """The run directory of the stage named ``stage_name`` at ``point``, wherever it runs."""
        return self.stage_dir(point, self.methods[point.method].stage(stage_name))


def _unknown(given: dict, allowed: set, where: str, path: Path) -> None:
    extra = sorted(set(given) - allowed)
    if extra:
        raise StudyError(f"{path}: unknown key {extra[0]!r} in {where}; allowed: {', '.join(sorted(allowed))}.")


def _mapping(value, where: str, path: Path) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{path}: {where} must be a mapping of key: value, got {type(value).__name__}.")
    return value


def _folds(value, where: str, path: Path) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or value < 2:
        raise StudyError(f"{path}: {where}={value!r}: k-fold testing needs an integer k >= 2 (or leave it out).")
    return value


def load_study(path: str | Path) -> Study:
    """Read and check a study YAML (see the module docstring); every error names the key."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file not found: {path}.")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML ({' '.join(str(err).split())}).") from None
    spec = _mapping(spec, "the file", path)
    _unknown(spec, STUDY_KEYS, "the study", path)
    for key in ("study", "methods"):
        if key not in spec:
            raise StudyError(f"{path}: key {key!r} is missing.")
    data = _mapping(spec.get("data"), "data", path)
    _unknown(data, DATA_KEYS, "data", path)
    fractions = [float(s) for s in spec.get("signal_fractions") or []]
    seeds = [int(g) for g in spec.get("injection_seeds") or []]
    methods = {}
    for name, entry in _mapping(spec["methods"], "methods", path).items():
        entry = _mapping(entry, f"methods.{name}", path)
        _unknown(entry, METHOD_KEYS, f"methods.{name}", path)
        stages = []
        for i, raw in enumerate(entry.get("stages") or []):
            where = f"methods.{name}.stages[{i}]"
            raw = _mapping(raw, where, path)
            _unknown(raw, STAGE_KEYS, where, path)
            if "reuse" in raw:
                _unknown(raw, {"name", "reuse"}, f"{where} (a stage that reuses another has only name and reuse)", path)
                if "name" not in raw:
                    raise StudyError(f"{path}: {where} needs a name (the name of the stage it reuses).")
                stages.append(Stage(str(raw["name"]), Path(), (), reuse=str(raw["reuse"])))
                continue
            if "name" not in raw or "config" not in raw:
                raise StudyError(f"{path}: {where} needs a name and a config.")
            commands = tuple(raw.get("commands", ("fit", "test")))
            bad = [c for c in commands if c not in COMMANDS]
            if bad or not commands:
                raise StudyError(f"{path}: {where}.commands {list(commands)}: choose from {', '.join(COMMANDS)}.")
            if "fit" in commands[1:]:
                raise StudyError(f"{path}: {where}.commands: fit must come first.")
            config = Path(raw["config"])
            if not config.is_file():
                raise StudyError(f"{path}: {where}.config {config} not found (paths are relative to where you run hepgen).")
            only = raw.get("signal_fractions")
            only = None if only is None else tuple(float(v) for v in (only if isinstance(only, list) else [only]))
            stages.append(Stage(str(raw["name"]), config, commands, _mapping(raw.get("args"), f"{where}.args", path),
                                str(raw.get("ckpt_path", "last")), bool(raw.get("shared", False)), only))  # fmt: skip
        if not stages:
            raise StudyError(f"{path}: methods.{name} has no stages.")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise StudyError(f"{path}: methods.{name}: stage names must differ, got {names}.")
        for i, stage in enumerate(stages):
            for value in stage.args.values():
                for ref in PLACEHOLDER.findall(str(value)):
                    if ref not in names[:i]:
                        raise StudyError(
                            f"{path}: methods.{name}.{stage.name}: placeholder {{{ref}}} names no earlier stage "
                            f"(earlier: {', '.join(names[:i]) or 'none'})."
                        )
                    if stages[names.index(ref)].signal_fractions is not None:
                        raise StudyError(
                            f"{path}: methods.{name}.{stage.name}: placeholder {{{ref}}} names a stage that runs only "
                            "at its own signal_fractions; a stage others read must run at every point."
                        )
        report = str(entry.get("report_stage", names[-1]))
        closure = entry.get("closure_stage")
        for key, value in (("report_stage", report), ("closure_stage", closure)):
            if value is not None and value not in names:
                raise StudyError(f"{path}: methods.{name}.{key} {value!r} is not one of its stages {names}.")
        methods[str(name)] = Method(
            str(name), stages,
            [float(s) for s in entry["signal_fractions"]] if "signal_fractions" in entry else fractions,
            [int(g) for g in entry["injection_seeds"]] if "injection_seeds" in entry else seeds,
            report, closure, _folds(entry.get("folds"), f"methods.{name}.folds", path),
        )  # fmt: skip
    if not methods:
        raise StudyError(f"{path}: methods is empty.")
    for method in methods.values():
        for stage in (s for s in method.stages if s.reuse is not None):
            _check_reuse(method, stage, methods, path)
    return Study(str(spec["study"]), Path(spec.get("root", "runs/ad_study")), data, methods,
                 _mapping(spec.get("common_args"), "common_args", path), path)  # fmt: skip


def _check_reuse(method: Method, stage: Stage, methods: dict[str, Method], path: Path) -> None:
    """A reused stage must exist, run itself, and run at every point of the method reusing it."""
    where = f"{path}: methods.{method.name}.{stage.name}: reuse: {stage.reuse}"
    other = methods.get(stage.reuse)
    if other is None or other is method:
        others = ", ".join(m for m in methods if m != method.name) or "none"
        raise StudyError(f"{where} names no other method of the study (others: {others}).")
    real = other.stage(stage.name)
    if real is None or real.reuse is not None or real.shared or real.signal_fractions is not None:
        raise StudyError(f"{where}: that method needs its own stage named {stage.name!r}, run at every one of its "
                         "points (not shared, not reused, no signal_fractions of its own).")  # fmt: skip
    missing = (set(method.signal_fractions) - set(other.signal_fractions)) | (
        set(method.injection_seeds) - set(other.injection_seeds))
    if missing or method.folds != other.folds:
        raise StudyError(f"{where}: {stage.reuse} must scan every S/B, seed and fold of {method.name} "
                         f"(it lacks {sorted(missing) or 'its folds'}).")  # fmt: skip


# --- the data ------------------------------------------------------------------------------------------
def prepare_data(study: Study) -> None:
    """Make the study's toy folder with every (S/B, seed) the methods need, or check it has them."""
    from datamodules.base import made_data_lock
    from hepgen.io.anomaly import data_file_name

    data = dict(study.data)
    if "data_dir" not in data:
        return
    folder = Path(data.pop("data_dir"))
    source = data.pop("source", "real")
    fractions = sorted({s for m in study.methods.values() for s in m.signal_fractions})
    seeds = sorted({g for m in study.methods.values() for g in m.injection_seeds})
    needed = [folder / f"seed{g}" / data_file_name(s) for g in seeds for s in fractions]
    if source == "made" and not (folder / "ad_toy.json").is_file():
        from hepgen.synth.ad_toy import make_ad_toy

        with made_data_lock(folder):
            if not (folder / "ad_toy.json").is_file():  # another array task may have made it meanwhile
                kind = data.pop("toy_kind", "nr")
                print(f"hepgen ad: making the {kind} toy study in {folder} ({len(fractions)} S/B x {len(seeds)} seeds)")
                make_ad_toy(folder, kind=kind, signal_fractions=fractions or (0.0,), seeds=seeds or (1,), **data)
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise StudyError(
            f"{missing[0]} is missing ({len(missing)} of the study's {len(needed)} data files are): make the study "
            f"again into a new folder (hepgen data make ad_toy --signal-fractions ... --seeds ...) or remove the "
            f"signal fractions and seeds it lacks from {study.source}."
        )


# --- running a stage ------------------------------------------------------------------------------------
def _cli_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _substitute(value, stage_dirs: dict[str, Path]):
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: str(stage_dirs[m.group(1)]), value)
    return value


def stage_arguments(study: Study, point: Point, stage: Stage, stage_dirs: dict[str, Path]) -> list[str]:
    """The command-line arguments (after ``-c config``) every command of ``stage`` at ``point`` gets."""
    stage_dir = study.stage_dir(point, stage)
    point = study.stage_point(point, stage)
    args = {"run.root": str(study.folder), "run.experiment": f"{point.method}/{stage_dir.parent.name}", "run.version": stage.name}
    if "data_dir" in study.data:
        args["data.init_args.data_dir"] = str(study.data["data_dir"])
        args["data.init_args.source"] = study.data.get("source", "real")
    if point.signal_fraction is not None:
        args["data.init_args.signal_fraction"] = point.signal_fraction
    if point.injection_seed is not None:
        args["data.init_args.injection_seed"] = point.injection_seed
    if point.fold is not None:
        args["data.init_args.test_folds"] = study.methods[point.method].folds
        args["data.init_args.test_fold"] = point.fold
    args.update(study.common_args)
    args.update({k: _substitute(v, stage_dirs) for k, v in stage.args.items()})
    return [f"--{key}={_cli_value(value)}" for key, value in args.items()]


def _marker(stage_dir: Path, command: str) -> Path:
    return stage_dir / ".study" / f"{command}.done"


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("hepgen: error:")]
    return (errors or lines or ["(empty log)"])[-1].strip()


@contextlib.contextmanager
def _log_handlers_to(stream):
    """Point the console handlers of Python's loggers (Lightning's "Seed set to 0", "GPU
    available", ...) at ``stream`` for a while: they hold the original stderr, which
    ``redirect_stderr`` does not reach."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    moved = []
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                moved.append((handler, handler.setStream(stream)))
    try:
        yield
    finally:
        for handler, previous in moved:
            handler.setStream(previous)


def run_command(command: str, config: Path, arguments: list[str], log: Path) -> float:
    """``hepgen <command> -c <config> <arguments>`` in this process, its output appended to ``log``.

    Returns the wall time in seconds. A failure raises :class:`StudyError` with the command's own
    last error line and the log's path.
    """
    from hepgen.cli import main as hepgen_main

    argv = [command, "-c", str(config), *arguments]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ hepgen {' '.join(argv)}\n")
        out.flush()
        saved_argv = sys.argv
        sys.argv = [saved_argv[0], *argv]  # as if typed: LightningCLI warns when given args and a command line
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), _log_handlers_to(out):
                hepgen_main()
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise StudyError(f"hepgen {command} failed: {_last_line(log)} (full output: {log})") from None
        except HepgenError as err:
            raise StudyError(f"hepgen {command} failed: {err} (full output: {log})") from None
        except Exception as err:  # noqa: BLE001 - the traceback is in the debugger's hands, the log names it
            out.write(f"{type(err).__name__}: {err}\n")
            raise StudyError(
                f"hepgen {command} failed with {type(err).__name__}: {' '.join(str(err).split())[:300]} "
                f"(full output: {log}; rerun the command there with --debug for the traceback)"
            ) from err
        finally:
            sys.argv = saved_argv
    return time.perf_counter() - start


def run_stage(study: Study, point: Point, stage: Stage, stage_dirs: dict[str, Path]) -> dict[str, float]:
    """Run the commands of ``stage`` that have not finished; returns {command: seconds} of those run."""
    stage_dir = stage_dirs[stage.name]
    arguments = stage_arguments(study, point, stage, stage_dirs)
    log = stage_dir.parent / f"{stage.name}.log"
    times = {}
    for command in stage.commands:
        marker = _marker(stage_dir, command)
        if marker.is_file():
            continue
        if command == "fit":
            # a fit killed after a checkpoint continues from it (the same run directory: the CLI
            # refuses a changed model or data there, so the study file cannot drift under it)
            resume = ["--ckpt_path=last"] if any(p.name == "last.ckpt" for p in run_checkpoints(stage_dir)) else []
            times[command] = run_command("fit", stage.config, arguments + resume, log)
        else:
            saved = stage_dir / "config.yaml"
            if not saved.is_file():
                raise StudyError(f"{study.source}: stage {stage.name} runs {command} without a fit before it "
                                 f"and {saved} does not exist; put fit first in its commands.")  # fmt: skip
            own = [a for a in arguments if not a.startswith(("--run.", "--data.", "--model.", "--trainer.logger"))]
            times[command] = run_command(command, saved, own + [f"--ckpt_path={stage.ckpt_path}"], log)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"seconds": times[command], "finished": time.strftime("%Y-%m-%d %H:%M:%S")}))
    return times


def _real_stages(study: Study, point: Point):
    """(point, stage) of each stage that runs for ``point``, reused stages resolved to their own."""
    for stage in study.methods[point.method].stages:
        at, real = study.resolve(point, stage)
        if real.runs_at(at):
            yield at, real


def point_done(study: Study, point: Point) -> bool:
    return all(_marker(study.stage_dir(at, s), c).is_file() for at, s in _real_stages(study, point) for c in s.commands)


def run_point(study: Study, point: Point) -> dict[str, float]:
    times: dict[str, float] = {}
    for at, stage in _real_stages(study, point):
        stage_dirs = {s.name: study.stage_dir(at, s) for s in study.methods[at.method].stages}
        # every stage under its lock: a shared or reused one is reached by several points, maybe in
        # several array tasks at once; one trains it, the others wait and then find its markers
        with waiting_lock(stage_dirs[stage.name].parent / f".{stage.name}.lock"):
            for command, seconds in run_stage(study, at, stage, stage_dirs).items():
                times[f"{stage.name}:{command}"] = seconds
    return times


def _summary(study: Study, point: Point) -> str:
    from hepgen.study_report import point_metrics

    metrics = point_metrics(study, point)
    if not metrics or metrics.get("max_sic") is None:
        return ""
    text = f"max SIC {metrics['max_sic']:.2f}"
    if metrics.get("max_sic_fraction") is not None:
        text += f" ({100 * metrics['max_sic_fraction']:.0f} % of the optimum)"
    if metrics.get("closure_auc") is not None:
        text += f", CR closure AUC {metrics['closure_auc']:.3f}"
    return text


def _requeue_before(point: Point) -> None:
    """The job's time is nearly up: requeue it; the requeued job starts again at ``point``."""
    clear_time_limit()
    done, what = requeue_job()
    if not done:
        print(f"hepgen ad: {what}; going on until the time limit (rerun the same command to continue).", flush=True)
        return
    print(f"hepgen ad: time limit near: {what}; it continues with {point.method} {point.label}.", flush=True)
    wait_to_be_stopped(lambda: False)  # SLURM's SIGTERM ends this process
    raise SystemExit(0)


def run_study(study: Study, job: int = 0, jobs: int = 1, methods: list[str] | None = None) -> list[Point]:
    """Run this job's share of the points, printing one line per point; returns the points run."""
    if jobs < 1 or not 0 <= job < jobs:
        raise StudyError(f"--job {job} --jobs {jobs}: give 0 <= job < jobs.")
    unknown = sorted(set(methods or []) - set(study.methods))
    if unknown:
        raise StudyError(f"--methods {unknown[0]}: {study.source} has {', '.join(study.methods)}.")
    prepare_data(study)
    points = [p for i, p in enumerate(study.points()) if i % jobs == job and (not methods or p.method in methods)]
    todo = [p for p in points if not point_done(study, p)]
    print(f"hepgen ad: {study.name}: {len(points)} points in this job, {len(points) - len(todo)} already done, "
          f"runs in {study.folder}")  # fmt: skip
    start = time.perf_counter()
    if slurm_run_id() is not None:
        note_time_limit()  # the SLURM time-limit signal must not kill the study between trainings
    for n, point in enumerate(todo, 1):
        if time_limit_reached():
            _requeue_before(point)
        seconds = sum(run_point(study, point).values())
        elapsed = time.perf_counter() - start
        left = elapsed / n * (len(todo) - n)
        print(f"hepgen ad: [{n}/{len(todo)}] {point.method} {point.label}: {seconds:.0f} s. {_summary(study, point)}"
              f"  (elapsed {elapsed / 60:.1f} min, about {left / 60:.0f} min left)", flush=True)  # fmt: skip
    return todo


# --- command line -----------------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    """``hepgen ad run|report -c STUDY.yaml [...]``."""
    parser = argparse.ArgumentParser(prog="hepgen ad", description="Weak-supervision anomaly-detection studies.")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="train every method at every point of the study (resumable), then report")
    run.add_argument("-c", "--config", required=True, help="the study YAML (experiments/ad/study_*.yaml)")
    run.add_argument("--job", type=int, default=0, help="run the points whose index is JOB modulo JOBS")
    run.add_argument("--jobs", type=int, default=1, help="how many jobs share the study (a SLURM array's size)")
    run.add_argument("--methods", nargs="+", help="only these methods")
    run.add_argument("--no-report", action="store_true", help="skip the report (array tasks: report once at the end)")
    report = sub.add_parser("report", help="collect the finished points into the report (tables and plots)")
    report.add_argument("-c", "--config", required=True, help="the study YAML")
    args = parser.parse_args(argv)
    study = load_study(args.config)
    if args.action == "run":
        run_study(study, args.job, args.jobs, args.methods)
        if args.no_report:
            return
    from hepgen.study_report import write_report

    for path in write_report(study):
        print(f"hepgen ad: wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
