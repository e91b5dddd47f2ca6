"""PyTorch Lightning logger: ``Trainer(logger=RunwireLogger(project="llm"))``.

Every rank streams its own metrics into the one run of the job (stored per rank; runwire's
queries combine them); hyperparameters are logged once, by rank 0. Give all ranks the same run id
(RUNWIRE_RUN_ID, or torchrun / SLURM set one) when the launcher is not one runwire recognises.
Checkpoints are not uploaded: runwire has no artifact store yet.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any, Mapping

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

import runwire
from runwire.integrations._ranks import export_rank_layout


class RunwireLogger(Logger):
    """project: runwire project (default "lightning"). name: run display name. run_id: shared
    by all ranks (default from the launcher's environment). tags: run tags. settings: any
    emitter setting (gateway="host:port", token=..., gpu=False...), also from RUNWIRE_*."""

    def __init__(self, project: str = "lightning", name: str | None = None, run_id: str | None = None,
                 tags: Mapping[str, str] | None = None, **settings: Any) -> None:
        super().__init__()
        self._project = project
        self._run_name = name
        self._run_id = run_id
        self._tags = dict(tags or {})
        self._settings = settings
        self._run: runwire.Run | None = None

    @property
    def experiment(self) -> runwire.Run:
        """The runwire run of this process, started on first use (after the strategy set up ranks)."""
        if self._run is None:
            export_rank_layout(rank=rank_zero_only.rank)
            self._run = runwire.Run(project=self._project, name=self._run_name, tags=self._tags,
                                    run_id=self._run_id, **self._settings)
        return self._run

    @property
    def name(self) -> str:
        return self._project

    @property
    def version(self) -> str:
        return self.experiment.id

    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        if isinstance(params, Namespace):
            params = vars(params)
        if rank_zero_only.rank == 0 and params:
            self.experiment.log_params(dict(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = {}
        for key, value in metrics.items():
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[key] = float(value)
        if values:
            self.experiment.log(values, step=step)

    def finalize(self, status: str) -> None:
        if self._run is not None:
            self._run.finish(0 if status == "success" else 1)
