"""The `farm` command line: parse flags, call the layers below, print. Only this
package prints or reads flags; heavy imports stay inside commands."""

from farm.cli.main import main

__all__ = ["main"]
