"""Scoring and Monte Carlo labelling on a Ray cluster (``pip install fastprm[ray]``): Ray Data's
``map_batches`` over an actor pool, one model per actor.

- :func:`score_dataset`: a ``ray.data.Dataset`` of rows in, the same rows with ``scores`` out.
- :func:`score_files` / :func:`label_files`: ``fastprm score --ray`` / ``fastprm label --ray``, JSONL or
  Parquet files in, a folder of shards out, the same rows as the one-process commands write.

Importing this package imports Ray; nothing else in fastprm does.
"""

from .run import FileRun, RunFailed, Workers, label_files, score_dataset, score_files

__all__ = ["FileRun", "RunFailed", "Workers", "label_files", "score_dataset", "score_files"]
