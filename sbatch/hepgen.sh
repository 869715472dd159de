# Shared by the sbatch scripts: checks of the arguments before any training starts, and the
# srun line. SLURM runs a copy of the script from its spool folder, so the scripts find this file
# in the folder the job was submitted from: submit from the hepgen checkout (sbatch sbatch/...).

hepgen_fail() {
  echo "hepgen: error: $*" >&2
  exit 2
}

# hepgen_check_config SCRIPT [CONFIG]: the experiment YAML was given (first) and exists.
hepgen_check_config() {
  local script=$1 config=${2:-}
  case $config in
    "" | -*) hepgen_fail "sbatch/$script needs an experiment YAML first: sbatch [options] sbatch/$script experiments/<method>/<name>.yaml [hepgen options]" ;;
  esac
  [ -f "$config" ] || hepgen_fail "$config: no such experiment YAML (relative paths start in $PWD, the folder the job was submitted from)"
}

# hepgen_check_devices [hepgen options]: the processes follow the allocation (one task per GPU).
hepgen_check_devices() {
  local arg
  for arg in "$@"; do
    case $arg in
      --trainer.devices* | --trainer.num_nodes*)
        hepgen_fail "$arg: the processes follow the allocation; ask SLURM for them instead (--nodes, --ntasks-per-node, --gpus-per-node)" ;;
    esac
  done
  [ -n "${SLURM_NTASKS_PER_NODE:-}" ] || hepgen_fail "submit with --ntasks-per-node=<GPUs per node> (not -n): Lightning reads the processes per node from it"
  local tasks=$SLURM_NTASKS_PER_NODE gpus=${SLURM_GPUS_ON_NODE:-0}
  if [ "$gpus" -gt 0 ] && [ "$tasks" -ne "$gpus" ]; then
    hepgen_fail "$tasks tasks per node but $gpus GPUs per node: DDP runs one process per GPU; submit with --ntasks-per-node=$gpus (or --gpus-per-node=$tasks)"
  fi
}

# hepgen_srun SUBCOMMAND CONFIG [hepgen options]: every task runs one hepgen process (one DDP rank).
hepgen_srun() {
  local subcommand=$1 config=$2
  shift 2
  local accelerator=cpu
  [ "${SLURM_GPUS_ON_NODE:-0}" -gt 0 ] && accelerator=gpu
  # Compute nodes often have no internet: W&B logs offline (wandb sync <run dir>/wandb/offline-run-* later).
  export WANDB_MODE=${WANDB_MODE:-offline}
  export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
  # --kill-on-bad-exit: a rank that dies (a lost node, an error on one GPU) ends the others at once,
  # and srun names it ("task 1: Exited ..."), instead of leaving them waiting in a collective until
  # the time limit. The strategy stays auto: hepgen picks DDP, with unused-parameter search for GANs.
  srun --kill-on-bad-exit=1 "${HEPGEN_PYTHON:-python3}" -m hepgen "$subcommand" --config "$config" \
    --trainer.accelerator "$accelerator" --trainer.devices "$SLURM_NTASKS_PER_NODE" \
    --trainer.num_nodes "${SLURM_NNODES:-1}" "$@"
}
