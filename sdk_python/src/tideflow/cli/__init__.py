"""tidectl: the admin command line (installed with `tideflow[cli]`)."""

from tideflow.cli._app import main

__all__ = ["main"]
