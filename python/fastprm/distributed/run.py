"""Scoring and labelling over Ray Data: ``map_batches`` over an actor pool, one model per actor.

Ray retries a batch whose actor died (the pool restarts the actor: ``max_restarts=-1`` and
``max_task_retries=-1`` are Ray Data's defaults for actor pools), so a killed worker costs its batch, not
the run, and every input row reaches the output once. Batches are runs of consecutive input rows, so the
rows of one problem that are next to each other in the input (best-of-N samples, a GRPO group) mostly land
in one batch, where the scorer runs their shared prompt once.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from ..io import BadRow
from .files import LABEL_COLUMNS, SCORE_COLUMNS, OutputShards, RowFiles, input_format
from .workers import LabelFileRows, ScoreFileRows, ScoreRecords


@dataclass(frozen=True)
class Workers:
    """The actor pool: ``num_workers`` actors, each with ``cpus_per_worker`` CPUs (its torch threads) and
    ``gpus_per_worker`` GPUs, fed ``batch_rows`` rows per call."""

    num_workers: int = 1
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0
    batch_rows: int = 256

    def __post_init__(self):
        for name in ("num_workers", "cpus_per_worker", "batch_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.gpus_per_worker, (int, float)) or not self.gpus_per_worker >= 0:
            raise ValueError(f"gpus_per_worker must be a number >= 0, got {self.gpus_per_worker!r}")

    def map_batches(self, ds: ray.data.Dataset, actor: type, **constructor_kwargs) -> ray.data.Dataset:
        return ds.map_batches(
            actor,
            fn_constructor_kwargs={**constructor_kwargs, "threads": self.cpus_per_worker},
            batch_size=self.batch_rows,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=self.num_workers),
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
        )


class RunFailed(RuntimeError):
    """A file run that did not finish: ``cause`` is what failed (a :class:`~fastprm.io.BadRow` when a bad
    row stopped it: :attr:`bad_row`), ``partial`` the temporary folder with the shards written before, or
    None when there were none."""

    def __init__(self, cause: BaseException, partial: Path | None):
        super().__init__(str(cause))
        self.cause, self.partial = cause, partial

    @property
    def bad_row(self) -> BadRow | None:
        """The bad row that stopped the run, found through the errors Ray wrapped it in."""
        err: BaseException | None = self.cause
        while err is not None:
            inner = getattr(err, "cause", None)  # Ray's RayTaskError: a subclass of its cause's class too
            if inner is None and isinstance(err, BadRow):
                return err
            err = inner or err.__cause__
        return None

    def note(self) -> str:
        """Where the rows written before the failure are, in one clause."""
        return f"what was written before is in {self.partial}" if self.partial else "no shard was written"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def score_dataset(
    ds: ray.data.Dataset,
    model: str | os.PathLike,
    *,
    num_workers: int = 1,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 0,
    batch_rows: int = 256,
    split_steps: str | None = None,
    skip_bad_rows: bool = False,
    convention: str = "auto",
    dtype: str | None = None,
    device: str | None = None,
    **scorer_options,
) -> ray.data.Dataset:
    """Scores every row of ``ds`` with the PRM in ``model`` on a Ray actor pool (lazily, as Ray Data does).

    Args:
        ds: rows in any format ``fastprm score`` reads ({problem, steps}, ProcessBench, TRL stepwise
            {prompt, completions}, {problem, solution} with ``split_steps``, GSM8K, {input_ids}).
        model: a PRM checkpoint folder every worker can read.
        num_workers, cpus_per_worker, gpus_per_worker, batch_rows: the pool (:class:`Workers`).
        split_steps: regex splitting a ``solution`` into steps.
        skip_bad_rows: a row that cannot be scored gets its reason in ``error`` instead of failing the run.
        convention, dtype (``"float32"``, ``"bfloat16"``...), device: how the PRM loads
            (:meth:`fastprm.models.PRM.from_pretrained`).
        scorer_options: :class:`fastprm.scoring.Scorer` options (``batch_tokens``, ``max_length``,
            ``truncation``, ``threshold``, ``layout``, ``gemm_route``, ``compile``).

    Returns:
        The input columns plus ``scores`` (a struct of :class:`fastprm.scoring.SolutionScores`' fields:
        ``step_scores`` list<double>, ``min``/``prod``/``mean``/``last`` double, ``first_error`` int64...),
        ``error`` (string, null when scored) and ``steps`` when split from a ``solution``.
    """
    workers = Workers(num_workers, cpus_per_worker, gpus_per_worker, batch_rows)
    _check_dtype(dtype)
    load_options = {"convention": convention, "dtype": dtype, "device": device}
    return workers.map_batches(
        ds, ScoreRecords, model=str(model), load_options=load_options, scorer_options=scorer_options,
        split_steps=split_steps, skip_bad_rows=skip_bad_rows,
    )  # fmt: skip


def _check_dtype(dtype: str | None) -> None:
    """Here, not in every worker: a bad name fails before the pool starts."""
    import torch

    if dtype is not None and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ValueError(f"dtype must name a torch dtype such as 'float32' or 'bfloat16', got {dtype!r}")


@dataclass
class FileRun:
    """What a file run wrote: the shard folder, its format and the counts the workers reported."""

    output: Path
    output_format: str
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def score_files(
    inputs: list[str],
    output: str | os.PathLike,
    model: str | os.PathLike,
    workers: Workers,
    *,
    output_format: str | None = None,
    split_steps: str | None = None,
    skip_bad_rows: bool = False,
    load_options: dict | None = None,
    scorer_options: dict | None = None,
) -> FileRun:
    """``fastprm score --ray``: JSONL or Parquet files (or folders of shards) scored into a new folder of
    shards (``part-NNNNNN.jsonl`` / ``.parquet``) whose rows are ``fastprm score``'s output rows; see
    :func:`write_shards` for how the folder appears."""
    return write_shards(
        inputs, output, output_format, workers, ScoreFileRows, SCORE_COLUMNS,
        model=str(model), load_options=load_options or {}, scorer_options=scorer_options or {},
        split_steps=split_steps, skip_bad_rows=skip_bad_rows,
    )  # fmt: skip


def label_files(
    inputs: list[str],
    output: str | os.PathLike,
    generator_args: dict,
    options,
    workers: Workers,
    *,
    output_format: str | None = None,
    split_steps: str | None = None,
) -> FileRun:
    """``fastprm label --ray``: rows labelled by Monte Carlo rollouts (``options``:
    :class:`fastprm.labeling.rows.LabelOptions`) into a new folder of shards of ``fastprm label``'s rows."""
    return write_shards(
        inputs, output, output_format, workers, LabelFileRows, LABEL_COLUMNS,
        generator_args=generator_args, options=options, split_steps=split_steps,
    )  # fmt: skip


def write_shards(
    inputs: list[str],
    output: str | os.PathLike,
    output_format: str | None,
    workers: Workers,
    actor: type,
    parquet_columns: dict,
    **actor_kwargs,
) -> FileRun:
    """Reads ``inputs``, runs ``actor`` over them on ``workers`` and writes the shards.

    The shards are written into a temporary folder beside ``output`` that is renamed to ``output`` only when
    every row is written, so ``output`` never holds part of a run; after a failure the shards written so far
    stay in the temporary folder (:attr:`RunFailed.partial`). The output keeps the input's
    row order (Ray Data's ``preserve_order``), so shard ``part-000000`` holds the first rows.
    """
    output = Path(output)
    if output.exists():
        raise ValueError(f"--output {output} exists; give a new folder")
    in_format = input_format(inputs)
    fmt = output_format or in_format
    partial = Path(
        tempfile.mkdtemp(dir=output.absolute().parent, prefix=output.name + ".", suffix=".partial")
    )
    options = ray.data.DataContext.get_current()
    saved = options.execution_options.preserve_order, options.raise_original_map_exception
    options.execution_options.preserve_order = True
    options.raise_original_map_exception = True  # a worker's BadRow reaches us as itself, not as text
    start = time.perf_counter()
    # Reading and writing shards take no CPU of the budget: the actor pool may hold every CPU of the
    # cluster, and a read task waiting for one would wait forever.
    rows = ray.data.read_datasource(RowFiles(inputs, in_format), num_cpus=0)
    sink = OutputShards(str(partial), fmt, parquet_columns)
    try:
        workers.map_batches(rows, actor, **actor_kwargs).write_datasink(sink, ray_remote_args={"num_cpus": 0})
    except BaseException as err:
        if not any(partial.iterdir()):
            partial.rmdir()
        raise RunFailed(err, partial if partial.exists() else None) from err
    finally:
        options.execution_options.preserve_order, options.raise_original_map_exception = saved
    os.chmod(partial, 0o777 & ~_umask())  # mkdtemp's 0700 would survive the rename
    os.replace(partial, output)
    return FileRun(output, fmt, sink.totals, time.perf_counter() - start)
