"""Console output of the commands: tables that read in full at 80 columns, and no third-party noise.

``quiet_third_party`` silences, each by its exact message, the warnings and advertisements that
the libraries under cme-vlm print on every stage and that a user can do nothing about; any other
warning still shows. Where the output is not a terminal, the Hugging Face progress bars (which a
log file shows as one endless line) are left out; training prints its own progress lines there
(``cme_vlm.training.progress``).
"""

from __future__ import annotations

import logging
import os
import warnings

from rich.table import Table

# (message at the start of the warning, category, why it is noise for a cme-vlm user)
NOISY_WARNINGS = (
    (r"Specifying null_placement in SortOptions is deprecated", FutureWarning,
     "pyarrow, about how datasets calls it when sorting; nothing to change on our side"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
     "torch, about Lightning's own pytree helper"),
    (r"Using ModelCheckpoint with manual optimization and every_n_train_steps", UserWarning,
     "Lightning: our manual steps close each window before a checkpoint, so the state after the step is the one "
     "to resume from (cme_vlm.training.stepping)"),
    (r"Checkpoint directory .* exists and is not empty", UserWarning,
     "Lightning, when a stage resumes from its own checkpoints (cme_vlm.training.trainer.resume_checkpoint)"),
)
NOISY_LOG_LINES = {
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip: For seamless cloud logging",),  # an advertisement
}
QUIET_ENV = {"WANDB_DISABLE_WEAVE": "true"}  # W&B's Weave advertisement, printed because google-genai is imported
UNLESS_TERMINAL_ENV = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


class _DropLines(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_third_party(terminal: bool) -> None:
    """Silence the known third-party noise (``NOISY_WARNINGS``, ``NOISY_LOG_LINES``); run before those libraries load."""
    for message, category, _ in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for logger, starts in NOISY_LOG_LINES.items():
        logging.getLogger(logger).addFilter(_DropLines(starts))
    for key, value in {**QUIET_ENV, **({} if terminal else UNLESS_TERMINAL_ENV)}.items():
        os.environ.setdefault(key, value)


def folding_table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    """A table whose cells wrap instead of being cut with an ellipsis (a pipe or a narrow terminal gives 80 columns)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    return table
