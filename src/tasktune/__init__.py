"""tasktune: embed a task into a language model's weights by fine-tuning, and prove it with numbers."""

__version__ = "0.1.0"

from tasktune.config import TaskConfig, TrainConfig, load_task
from tasktune.errors import TaskTuneError

__all__ = ["TaskConfig", "TaskTuneError", "TrainConfig", "__version__", "load_task"]
