"""`mambadna ism`: argument parsing only; defaults live in IsmConfig (mambadna.tasks.ism)."""
from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("ism")
    def ism_cmd(
        model: str = typer.Option(..., "--model", help="Pretrained or fine-tuned model directory."),
        reference: str = typer.Option(..., "--reference", help="Genome FASTA."),
        out: str = typer.Option(..., "--out", help="Output TSV: contig pos ref alt score (1-based pos, one row "
                                                   "per alternative base)."),
        region: Optional[List[str]] = typer.Option(None, "--region", help="CONTIG:START-END (1-based, inclusive); "
                                                                          "repeat for several."),
        bed: Optional[str] = typer.Option(None, "--bed", help="BED of regions (instead of --region)."),
        bigwig: Optional[str] = typer.Option(None, "--bigwig", help="bigWig track of the per-position mean score "
                                                                    "(mean_llr / mean_diff)."),
        logo: Optional[str] = typer.Option(None, "--logo", help="PNG logo of the first region (reference bases "
                                                                "scaled by importance) over a heatmap."),
        window: Optional[int] = typer.Option(None, "--window", help="Bases per variant window, as classify [1024]."),
        scores: Optional[str] = typer.Option(None, "--scores", help="llr (zero-shot) | classifier (delta probability "
                                                                    "of a fine-tuned head) [classifier with a head, "
                                                                    "else llr]."),
        rc_average: Optional[bool] = typer.Option(None, "--rc-average/--no-rc-average",
                                                  help="Average each score with its reverse-complement view "
                                                       "[off zero-shot; the head's setting for classifier]."),
        target: Optional[str] = typer.Option(None, "--target", help="Class whose delta probability is scored "
                                                                    "[binary: the positive class]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Positions per device batch "
                                                                            "[from the token budget]."),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda [auto]."),
        precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 (autocast on CUDA) [fp32]."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (positions/s)."),
    ) -> None:
        """Saturation mutagenesis: score every substitution at every position of the regions."""
        from mambadna.tasks.ism import IsmConfig, ism

        given = {k: v for k, v in locals().items() if v is not None and k not in ("IsmConfig", "ism")}
        s = ism(IsmConfig(**given))
        typer.echo(f"wrote {s['rows']} rows ({s['positions']} positions) to {out}"
                   + "".join(f" and {p}" for p in (bigwig, logo) if p), err=True)
