"""Training methods, one file each, registered by name (``selfdistill list methods``)."""

from . import ban, ce, consistency, cskd, dkd, dlb, ips, kd, label_smoothing, mean_teacher, pskd, sld, tfkd, zipf  # noqa: F401  (registration)
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
    register_method,
    validate_method_options,
)

__all__ = [
    "METHODS", "Method", "MethodContext", "NoOptions", "StepOutput", "build_method", "describe_method",
    "list_methods", "method_options", "register_method", "validate_method_options",
]
