"""Hugging Face Transformers callback: ``Trainer(..., callbacks=[RunwireCallback(project="llm")])``.

Streams what the Trainer logs (loss, learning rate, grad norm, eval metrics) at its global step,
from every process (stored per rank), and the training arguments and model config as params
(once, from the main process). The run ends with training.
"""

from __future__ import annotations

from typing import Any, Mapping

from transformers import TrainerCallback

import runwire
from runwire.integrations._ranks import export_rank_layout


class RunwireCallback(TrainerCallback):
    """project: runwire project (default "huggingface"). name, run_id, tags, settings: as
    runwire.init (settings: gateway=..., token=..., gpu=False, also from RUNWIRE_*)."""

    def __init__(self, project: str = "huggingface", name: str | None = None, run_id: str | None = None,
                 tags: Mapping[str, str] | None = None, **settings: Any) -> None:
        self.project, self.name, self.run_id, self.tags, self.settings = project, name, run_id, dict(tags or {}), settings
        self.run: runwire.Run | None = None

    def _start(self, args, state, model) -> runwire.Run:
        if self.run is None:
            export_rank_layout(rank=args.process_index, world_size=args.world_size)
            self.run = runwire.Run(project=self.project, name=self.name or args.run_name, tags=self.tags,
                                   run_id=self.run_id, **self.settings)
            if state.is_world_process_zero:
                params = {k: v for k, v in args.to_sanitized_dict().items()}
                config = getattr(model, "config", None)
                if config is not None and hasattr(config, "to_dict"):
                    params["model"] = {k: v for k, v in config.to_dict().items()
                                       if isinstance(v, (int, float, str, bool))}
                self.run.log_params(params)
        return self.run

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._start(args, state, model)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        run = self._start(args, state, model)
        values = {k: float(v) for k, v in (logs or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values:
            run.log(values, step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.run is not None:
            self.run.finish(0)
