"""`mambadna convert from-caduceus | to-caduceus`: argument parsing only."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    convert = typer.Typer(no_args_is_help=True, help="Convert model folders between mambadna and Caduceus.")

    @convert.command("from-caduceus")
    def from_caduceus_cmd(
            src: str = typer.Argument(..., help="Caduceus model folder (config.json with model_type caduceus, "
                                                "model.safetensors or pytorch_model.bin)."),
            out: str = typer.Argument(..., help="mambadna model folder to write (written whole or not at all)."),
            overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it is a model folder."),
    ) -> None:
        """Convert a Caduceus (Ph or PS) checkpoint into a mambadna model folder."""
        from mambadna.tasks.convert import convert_from_caduceus

        typer.echo(f"wrote {convert_from_caduceus(src, out, overwrite=overwrite)}")

    @convert.command("to-caduceus")
    def to_caduceus_cmd(
            src: str = typer.Argument(..., help="mambadna model folder (trained, fine-tuned or converted)."),
            out: str = typer.Argument(..., help="Caduceus folder to write: config.json + model.safetensors."),
            overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it is a model folder."),
    ) -> None:
        """Write a model as a Caduceus checkpoint that CaduceusForMaskedLM.from_pretrained opens."""
        from mambadna.tasks.convert import to_caduceus

        typer.echo(f"wrote {to_caduceus(src, out, overwrite=overwrite)}")

    app.add_typer(convert, name="convert")
