"""Tasks the engine trains: image classification, semantic segmentation and object detection."""

from .base import TASKS, Evaluator, Task, get_task, list_tasks, register_task

__all__ = ["TASKS", "Evaluator", "Task", "get_task", "list_tasks", "register_task"]
