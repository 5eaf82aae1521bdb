"""`mambadna info`: argument parsing only."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info_cmd(model: str = typer.Argument(..., help="Model directory (config.json + model.safetensors).")) -> None:
        """Print a model's config, parameter count and training state."""
        from mambadna.tasks.info import model_info

        typer.echo(model_info(model))
