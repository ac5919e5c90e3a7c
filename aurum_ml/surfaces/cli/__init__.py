"""``aurum-ml``: score photos from the command line.

With no ``AURUM_BROKER_URL`` the whole chain runs in this process on the embedded default
(memory broker, a worker thread, the local Qdrant folder under ``AURUM_DATA_DIR``); with it,
jobs go to the cluster and the command waits for their results.

Exit status (every command): 0 done — for ``score``, every image got a result, scored or
rejected; 1 the infrastructure failed (broker or Redis unreachable, a job failed or timed
out); 2 a usage or configuration error (a path that is not a file, a bad option, bad
settings), reported before anything is sent; 3 not found (``get-score``, ``similar``: the
user has no stored face).

The commands live by subject: :mod:`.score`, :mod:`.population`, :mod:`.ops`; what they
share is in :mod:`.common`.
"""

from __future__ import annotations

import logging

import click

from aurum_ml.surfaces.cli.ops import health_command, metrics_command, serve_command, status_command
from aurum_ml.surfaces.cli.population import (
    export_vectors_command,
    forget_command,
    get_score_command,
    import_vectors_command,
    leaderboard_command,
    rerank_command,
    similar_command,
    stats_command,
)
from aurum_ml.surfaces.cli.score import score_command

__all__ = ["main"]

EXIT_CODES = """\b
Exit status, for every command:
  0  done; for score: every image got a result (scored or rejected)
  1  the infrastructure failed: broker or Redis unreachable, a job failed or timed out
  2  a usage or configuration error, said before anything is sent
  3  not found: get-score or similar for a user with no stored face
"""


@click.group(epilog=EXIT_CODES)
@click.version_option(package_name="aurum-ml")
def main() -> None:
    """Aurum Circle face scoring."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


for command in (
    score_command,
    get_score_command,
    similar_command,
    leaderboard_command,
    stats_command,
    rerank_command,
    forget_command,
    export_vectors_command,
    import_vectors_command,
    health_command,
    status_command,
    metrics_command,
    serve_command,
):
    main.add_command(command)
