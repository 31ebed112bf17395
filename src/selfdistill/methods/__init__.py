"""Training methods of the classification task, one file each, registered by name (``selfdistill list methods``).

Every module of this package is imported here, so a method registers itself (``@register_method``) where it is
defined: adding one means adding its file (and its test), nothing else."""

import importlib
import pkgutil

from .base import (
    METHODS,
    Method,
    MethodContext,
    NoOptions,
    StepOutput,
    build_method,
    describe_method,
    list_methods,
    method_options,
    method_reference,
    register_method,
    validate_method_options,
)

HELPERS = ("base", "teacher")  # modules that define no method
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in HELPERS:
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "METHODS", "Method", "MethodContext", "NoOptions", "StepOutput", "build_method", "describe_method",
    "list_methods", "method_options", "method_reference", "register_method", "validate_method_options",
]
