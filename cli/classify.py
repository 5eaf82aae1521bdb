"""`mambadna classify`: argument parsing only."""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("classify")
    def classify_cmd(
        model: str = typer.Option(..., "--model", help="Fine-tuned classifier or pretrained model directory."),
        out: str = typer.Option(..., "--out", help="Output TSV (one row per allele or sequence)."),
        vcf: Optional[str] = typer.Option(None, "--vcf", help="Variants (VCF/BCF, plain or bgzip)."),
        reference: Optional[str] = typer.Option(None, "--reference", help="Reference FASTA (for --vcf/--bed; CRAM)."),
        fasta: Optional[str] = typer.Option(None, "--fasta", help="Score the sequences of a FASTA."),
        bed: Optional[str] = typer.Option(None, "--bed", help="Score BED intervals of --reference."),
        bam: Optional[str] = typer.Option(None, "--bam", help="Score the reads of a BAM/CRAM."),
        region: Optional[str] = typer.Option(None, "--region", help="BAM region, e.g. chr1:100-200."),
        min_mapq: int = typer.Option(0, "--min-mapq", help="Minimum mapping quality of BAM reads."),
        vcf_out: Optional[str] = typer.Option(None, "--vcf-out", help="Annotated VCF (.vcf.gz, bgzip + tabix)."),
        window: int = typer.Option(1024, "--window", help="Bases per variant window."),
        skip_ref_mismatch: bool = typer.Option(False, "--skip-ref-mismatch", help="Count and skip REF mismatches instead of failing."),
        batch_size: int = typer.Option(32, "--batch-size", help="Alleles or sequences per forward pass."),
        device: str = typer.Option("auto", "--device", help="auto|cpu|cuda."),
        pooling: Optional[str] = typer.Option(None, "--pooling", help="Embedding pooling for cosine distance [head's, else mean]."),
        center_width: int = typer.Option(64, "--center-width"),
        layer: int = typer.Option(-1, "--layer"),
        llr: Optional[bool] = typer.Option(None, "--llr/--no-llr", help="Zero-shot LLR [on when the model has no head]."),
        rc_average: Optional[bool] = typer.Option(None, "--rc-average/--no-rc-average", help="Average over x and its reverse complement [head's setting]."),
        max_records: Optional[int] = typer.Option(None, "--max-records", help="Stop after N VCF records (or sequences)."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Score variants (ref/alt windows) or sequences with a classifier or zero-shot."""
        from mambadna.tasks.classify import ClassifyConfig, classify

        cfg = ClassifyConfig(model=model, out=out, vcf=vcf, reference=reference, fasta=fasta, bed=bed, bam=bam,
                             region=region, min_mapq=min_mapq, vcf_out=vcf_out, window=window,
                             skip_ref_mismatch=skip_ref_mismatch, batch_size=batch_size, device=device,
                             pooling=pooling, center_width=center_width, layer=layer, llr=llr,
                             rc_average=rc_average, max_records=max_records, progress=progress)
        s = classify(cfg)
        typer.echo(f"wrote {s['rows']} rows to {out}" + (f" and {vcf_out}" if vcf_out else ""))
