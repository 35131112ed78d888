"""The project's exception types. Each message names the input at fault and how to fix it."""


class CmeVlmError(Exception):
    """Base class: an error a user can act on. The CLI prints it without a traceback."""


class ConfigError(CmeVlmError):
    """A config file, group or override is wrong."""


class DataError(CmeVlmError):
    """A frame, mask, manifest or dataset is wrong."""


class PrivacyError(CmeVlmError):
    """An outgoing request would carry something that must not leave the machine."""


class TeacherError(CmeVlmError):
    """The teacher or judge backend failed in a way the user must act on."""


class ModelError(CmeVlmError):
    """A model, checkpoint or weight directory is missing or of the wrong kind."""


class TrainingError(CmeVlmError):
    """Training cannot go on (for example a non-finite loss)."""


class BenchError(CmeVlmError):
    """A benchmark row could not be measured."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a run was working: ``run_dir`` holds what was kept, and a re-run there resumes."""

    def __init__(self, run_dir: object) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir
