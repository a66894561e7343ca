"""The `sparcode` command: one click group; each command is a thin module in `sparcode.commands`.

Commands import their heavy dependencies (torch, elasticsearch) inside the function body, so
`sparcode --help` and the pipeline commands start without loading torch.
"""
from __future__ import annotations

import importlib

import click

# command name -> module in sparcode.commands exposing a click command called `command`
_COMMANDS = {
    "train": "train",
    "evaluate": "evaluate",
    "export": "export",
    "index": "index",
    "reindex": "index",
    "search": "search",
    "es": "es",
    "semantic-ids": "semantic_ids",
    "bench": "bench",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(_COMMANDS)

    def get_command(self, ctx, name):
        module_name = _COMMANDS.get(name)
        if module_name is None:
            return None
        module = importlib.import_module(f"sparcode.commands.{module_name}")
        attr = "reindex_command" if name == "reindex" else "command"
        return getattr(module, attr)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="sparcode")
def main():
    """Train a SparCode recommender and serve it from Elasticsearch term lookups."""


if __name__ == "__main__":
    main()
