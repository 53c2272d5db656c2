"""Where pipelines run: datatrove executors (local, or Slurm array jobs with per-task site
resources) and the dask cluster of the mix's global pass. Imports no stage.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from datatrove.executor import SlurmPipelineExecutor
from datatrove.utils.logging import logger

from curate.config import SlurmConfig

DASK_WORKER_TIMEOUT_S = 600


class ClusterError(ValueError):
    """The Slurm cluster cannot take the job as asked (one-line message)."""


def slurm_command(*args: str) -> str:
    """Run a Slurm client command (sbatch, squeue, sinfo, ...) and return its output; one-line error otherwise."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise ClusterError(f"'{args[0]}' not found: is this a Slurm login node? (export SLURM_CONF if needed)") from None
    except subprocess.CalledProcessError as e:
        last = e.stderr.strip().splitlines()[-1] if e.stderr.strip() else str(e)
        raise ClusterError(f"{' '.join(args)} failed: {last}") from None
    return done.stdout


def default_partition() -> str:
    """The cluster's default partition (the one `sinfo` marks with '*')."""
    partitions = slurm_command("sinfo", "-h", "-o", "%P").split()
    for name in partitions:
        if name.endswith("*"):
            return name[:-1]
    if partitions:
        return partitions[0]
    raise ClusterError("the Slurm cluster lists no partition; set slurm.partition in the job file")


class SiteSlurmExecutor(SlurmPipelineExecutor):
    """datatrove's Slurm executor, asking for GPUs as the site wants them: `--gpus=N` or `--gres=gpu:N`."""

    def __init__(self, *args, gpu_request: str = "gpus", **kwargs):
        super().__init__(*args, **kwargs)
        self.gpu_request = gpu_request

    def get_sbatch_args(self, max_array: int = 1) -> dict:
        args = super().get_sbatch_args(max_array)
        if self.gpu_request == "gres" and "gpus" in args:
            args["gres"] = f"gpu:{args.pop('gpus')}"
        return args


def build_executor(pipeline: list, *, tasks: int, workers: int, logging_dir: str | Path,
                   slurm: SlurmConfig | None = None, task: str = "score", job_name: str = "curate", depends=None,
                   ask_partition: bool = True):
    """A LocalPipelineExecutor, or with `slurm` site settings a Slurm executor whose `run()` submits an
    array job of `tasks` ranks (at most `workers` at a time, after `depends` succeeded) with the
    resources of the chain's `task` (`slurm.stages.<task>` over the section's defaults). Without
    `ask_partition` an unset partition stays a placeholder (no `sinfo`: for printing the script)."""
    if slurm is None:
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
                                     logging_dir=str(logging_dir))
    resources = slurm.resources(task)
    return SiteSlurmExecutor(
        pipeline=pipeline, tasks=tasks, workers=workers, logging_dir=str(Path(logging_dir).resolve()),
        partition=resources.partition or (default_partition() if ask_partition else "<the cluster's default>"),
        time=resources.time,
        cpus_per_task=resources.cpus_per_task, mem_per_cpu_gb=resources.mem_per_cpu_gb,
        gpus_per_task=resources.gpus, gpu_request=resources.gpu_request, job_name=job_name,
        env_command=slurm.env_command, sbatch_args=dict(resources.sbatch_args), max_array_size=slurm.max_array_size,
        qos=resources.sbatch_args.get("qos"), depends=depends,
    )


@dataclass
class DaskCluster:
    """Where the mix's global pass runs: a dask LocalCluster in this process, or (with `slurm`
    settings) `slurm.dask_workers` worker jobs of a dask-jobqueue SLURMCluster."""

    slurm: SlurmConfig | None = None
    log_dir: str | None = None
    job_name: str = "curate-dask"

    @contextmanager
    def client(self):
        """A dask distributed Client on this cluster, made the default for `.compute()`."""
        from distributed import Client

        if self.slurm is None:
            from distributed import LocalCluster

            # in-process; its diagnostics servers listen on loopback only (None still binds 0.0.0.0:8787)
            cluster = LocalCluster(n_workers=1, threads_per_worker=os.cpu_count() or 1, processes=False,
                                   dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0")
        else:
            from dask_jobqueue import SLURMCluster

            s, r = self.slurm, self.slurm.resources("dask")
            extra = [f"--{k}={v}" for k, v in r.sbatch_args.items()]
            if r.gpus:
                extra.append(f"--gres=gpu:{r.gpus}" if r.gpu_request == "gres" else f"--gpus={r.gpus}")
            cluster = SLURMCluster(
                queue=r.partition or default_partition(), cores=r.cpus_per_task, processes=1,
                memory=f"{r.mem_per_cpu_gb * r.cpus_per_task}GB", walltime=r.time, job_name=self.job_name,
                log_directory=self.log_dir, job_script_prologue=[s.env_command] if s.env_command else [],
                job_extra_directives=extra, scheduler_options={"dashboard_address": None},
            )
            cluster.scale(jobs=s.dask_workers)
        try:
            with Client(cluster) as client:
                if self.slurm is not None:
                    logger.info(f"dask: waiting for a SLURMCluster worker (logs in {self.log_dir})")
                    client.wait_for_workers(1, timeout=DASK_WORKER_TIMEOUT_S)
                yield client
        finally:
            cluster.close()


def sbatch_script(executor: SlurmPipelineExecutor) -> str:
    """The sbatch script a Slurm executor submits (datatrove's own template and arguments), without submitting."""
    run = f"srun -l -n {executor.nodes_per_task} launch_pickled_pipeline {Path(executor.logging_dir.path) / 'executor.pik'}"
    return executor.get_launch_file_contents(executor.get_sbatch_args(1), run)
