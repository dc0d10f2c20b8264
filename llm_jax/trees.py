"""Names of pytree leaves: the one way a key path becomes text ('layers/attn/query')."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def key_names(path: Sequence[Any]) -> tuple[str, ...]:
    """The names along a `jax.tree_util` key path (dict keys, attributes, indices).

    The `.value` of a Flax box (nn.LogicallyPartitioned) is left out, so a boxed
    parameter and its unboxed array have the same name.
    """
    return tuple(
        str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
        for k in path
        if getattr(k, "name", None) != "value"
    )


def path_str(path: Sequence[Any]) -> str:
    """A key path as 'a/b/c'."""
    return "/".join(key_names(path))
