"""Training methods, one file each, registered by name (``selfdistill list methods``)."""

from . import (  # noqa: F401  (registration)
    ban,
    byot,
    ce,
    consistency,
    cskd,
    dino,
    dkd,
    dlb,
    ips,
    kd,
    label_smoothing,
    mean_teacher,
    pskd,
    sld,
    tfkd,
    uskd,
    zipf,
)
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

__all__ = [
    "METHODS", "Method", "MethodContext", "NoOptions", "StepOutput", "build_method", "describe_method",
    "list_methods", "method_options", "method_reference", "register_method", "validate_method_options",
]
