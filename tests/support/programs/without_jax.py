"""The CLI as installed, except that JAX cannot be imported: what a machine without the jax extra sees.

    python -m tests.support.programs.without_jax train SPEC ...   (exits with the CLI's code)
"""

from __future__ import annotations

import sys


class NoJax:
    """An import hook that finds no `jax` or `jaxlib`."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in ("jax", "jaxlib"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, NoJax())
    from service.cli import main

    sys.exit(main(sys.argv[1:]))
