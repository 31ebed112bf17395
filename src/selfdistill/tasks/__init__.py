"""Tasks the engine trains: image classification and semantic segmentation (detection building blocks in
:mod:`selfdistill.tasks.detection`)."""

from .base import TASKS, Evaluator, Task, get_task

__all__ = ["TASKS", "Evaluator", "Task", "get_task"]
