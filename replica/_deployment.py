"""The user's deployment: find it by import path, build it, and open its model caches.

A deployment is a class (built with the config's `init_kwargs`) whose instances are called
with each request, as in Ray Serve; an async function taking the request is accepted too.
Its `@multiplexed` methods get their caches when it is built rather than on the first request,
so the replica's first report already carries the real capacity.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from collections.abc import Callable, Mapping
from typing import Any, cast

from replica._multiplex import MultiplexedLoader

__all__ = ["DeploymentError", "build_deployment", "import_deployment", "open_caches"]

Deployment = Callable[..., Any]


class DeploymentError(Exception):
    """The deployment cannot be imported or is not something a replica can serve."""


def import_deployment(import_path: str) -> object:
    """The object named by "package.module:Attribute" (the attribute may be dotted)."""
    module_name, colon, attribute = import_path.partition(":")
    if not colon or not module_name or not attribute:
        raise DeploymentError(f"import path {import_path!r} must look like 'package.module:Class'")
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        detail = f"{type(error).__name__}: {error}"
        missing = error.name or ""
        if module_name != missing and not module_name.startswith(missing + "."):
            detail += "\n" + traceback.format_exc()
        raise DeploymentError(f"cannot import deployment {import_path!r}: {detail}") from error
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise
        raise DeploymentError(
            f"cannot import deployment {import_path!r}: importing {module_name!r} raised "
            f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
        ) from error
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise DeploymentError(
                f"cannot import deployment {import_path!r}: {module_name!r} has no {attribute!r}"
            ) from None
    return target


def build_deployment(target: object, init_kwargs: Mapping[str, Any]) -> Deployment:
    """An instance of the deployment class, or the function itself.

    Raises `DeploymentError` when `target` cannot serve requests; the constructor's own
    exceptions propagate unchanged.
    """
    if inspect.isclass(target):
        if not any("__call__" in vars(klass) for klass in target.__mro__[:-1]):
            raise DeploymentError(f"deployment class {target.__qualname__} has no __call__")
        return cast(Deployment, target(**init_kwargs))
    if callable(target):
        if init_kwargs:
            raise DeploymentError(
                f"deployment {getattr(target, '__qualname__', target)!r} is not a class, "
                "so it cannot take init_kwargs"
            )
        return target
    raise DeploymentError(f"deployment {target!r} is neither a class nor a callable")


def open_caches(deployment: object) -> int:
    """Create the caches of the deployment's `@multiplexed` loaders now; return how many."""
    opened = 0
    seen: set[int] = set()
    for klass in type(deployment).__mro__:
        for name, value in vars(klass).items():
            if not isinstance(value, MultiplexedLoader) or id(value) in seen:
                continue
            seen.add(id(value))
            bound = getattr(deployment, name, None)
            value.cache_for(None if isinstance(bound, MultiplexedLoader) else deployment)
            opened += 1
    return opened
