"""`mambadna attribute`: argument parsing only; defaults live in AttributeConfig (mambadna.tasks.attribute)."""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("attribute")
    def attribute_cmd(
        model: str = typer.Option(..., "--model", help="Fine-tuned model directory (with a head)."),
        out: str = typer.Option(..., "--out", help="Output .npz: attributions (N, L, 4) over A, C, G, T, onehot, "
                                                   "lengths, names, outputs."),
        fasta: Optional[str] = typer.Option(None, "--fasta", help="Sequences to attribute (FASTA)."),
        bed: Optional[str] = typer.Option(None, "--bed", help="BED intervals of --reference to attribute."),
        reference: Optional[str] = typer.Option(None, "--reference", help="Genome FASTA (for --bed)."),
        logo: Optional[str] = typer.Option(None, "--logo", help="PNG logos of the first (up to 4) sequences."),
        method: Optional[str] = typer.Option(None, "--method", help="ig | saliency | ixg (input x gradient) [ig]."),
        n_steps: Optional[int] = typer.Option(None, "--n-steps", help="Integrated-gradients intervals "
                                                                      "(trapezoid rule) [50]."),
        baseline: Optional[str] = typer.Option(None, "--baseline", help="IG baseline: uniform (0.25 each "
                                                                        "base) | zeros (no base; needs many "
                                                                        "--n-steps) [uniform]."),
        target: Optional[str] = typer.Option(None, "--target", help="Class to attribute [binary: the positive "
                                                                    "class]."),
        output: Optional[str] = typer.Option(None, "--output", help="logit | probability of the target [logit]."),
        rc_average: Optional[bool] = typer.Option(None, "--rc-average/--no-rc-average",
                                                  help="Attribute the mean of f(x) and f(RC x) [head's setting]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per batch "
                                                                            "[from the token budget]."),
        max_records: Optional[int] = typer.Option(None, "--max-records", help="Stop after N sequences."),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda [auto]."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar."),
    ) -> None:
        """Attributions of a fine-tuned head over the bases: saliency, input x gradient, integrated gradients."""
        from mambadna.tasks.attribute import AttributeConfig, attribute_file

        given = {k: v for k, v in locals().items() if v is not None and k not in ("AttributeConfig",
                                                                                  "attribute_file")}
        s = attribute_file(AttributeConfig(**given))
        typer.echo(f"wrote {s['method']} attributions of {s['rows']} sequences (target {s['target']}) to {out}"
                   + (f" and {logo}" if logo else ""), err=True)
