"""`mambadna classify`: argument parsing only; defaults live in ClassifyConfig."""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("classify")
    def classify_cmd(
        model: str = typer.Option(..., "--model", help="Fine-tuned classifier or pretrained model directory."),
        out: str = typer.Option(..., "--out", help="Output TSV (one row per allele or sequence)."),
        vcf: Optional[str] = typer.Option(None, "--vcf", help="Variants (VCF/BCF, plain, gzip or bgzip). Strict: a record beyond its contig, an unknown contig or a REF that differs from --reference is an error naming the line (see --skip-ref-mismatch)."),
        reference: Optional[str] = typer.Option(None, "--reference", help="Reference FASTA (for --vcf/--bed; CRAM)."),
        fasta: Optional[str] = typer.Option(None, "--fasta", help="Score the sequences of a FASTA. LF or CRLF; A C G T U N and IUPAC R Y K M S W B D H V in either case (IUPAC codes and N become the N token, U becomes T, soft-masked lower case reads as upper case); any other character is an error naming the record and offset."),
        bed: Optional[str] = typer.Option(None, "--bed", help="Score BED intervals of --reference (0-based half-open; start < end <= contig length, strand +, - or .; else an error naming the line)."),
        bam: Optional[str] = typer.Option(None, "--bam", help="Score the reads of a BAM/CRAM."),
        region: Optional[str] = typer.Option(None, "--region", help="BAM region, e.g. chr1:100-200."),
        min_mapq: Optional[int] = typer.Option(None, "--min-mapq", help="Minimum mapping quality of BAM reads [0]."),
        vcf_out: Optional[str] = typer.Option(None, "--vcf-out", help="Annotated VCF (.vcf.gz, bgzip + tabix)."),
        window: Optional[int] = typer.Option(None, "--window", help="Bases per variant window [1024]."),
        skip_ref_mismatch: Optional[bool] = typer.Option(None, "--skip-ref-mismatch", help="Count and skip REF mismatches instead of failing."),
        scores: Optional[str] = typer.Option(None, "--scores", help="Comma-separated subset of llr, cosine, classifier; only their forwards run [classifier or llr, and cosine]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Windows or sequences per forward pass [from the token budget]."),
        device: Optional[str] = typer.Option(None, "--device", help="auto|cpu|cuda [auto]."),
        precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 (autocast on CUDA) [fp32]."),
        pooling: Optional[str] = typer.Option(None, "--pooling", help="Embedding pooling for cosine distance [head's, else mean]."),
        center_width: Optional[int] = typer.Option(None, "--center-width", help="Window of 'center' pooling [64]."),
        layer: Optional[int] = typer.Option(None, "--layer", help="Block read for embeddings [-1]."),
        llr: Optional[bool] = typer.Option(None, "--llr/--no-llr", help="Add or drop the zero-shot LLR from the default scores."),
        rc_average: Optional[bool] = typer.Option(None, "--rc-average/--no-rc-average", help="Average scores over x and its reverse complement (zero-shot LLR and classifier) [head's setting; off zero-shot]."),
        max_records: Optional[int] = typer.Option(None, "--max-records", help="Stop after N VCF records (or sequences)."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress"),
        overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Replace an existing --out / --vcf-out that is not an earlier classify output."),
        shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Records per shard: the unit split across processes under torchrun and reused when an interrupted run is started again [from the token budget]."),
        gpus: Optional[int] = typer.Option(None, "--gpus", help="Run N processes under torchrun, one GPU each (with --device cpu: N CPU processes); the records are split across them and merged into the one output."),
    ) -> None:
        """Score variants (ref/alt windows) or sequences with a classifier or zero-shot."""
        from mambadna.tasks.classify import ClassifyConfig, classify

        given = {k: v for k, v in locals().items() if v is not None and k not in ("ClassifyConfig", "classify", "gpus")}
        from mambadna.cli.invocation import invocation_args
        from mambadna.components.distributed import is_main_process, launched

        cfg = ClassifyConfig(**given)
        if launched(gpus, device, invocation_args()):
            return
        s = classify(cfg)
        if is_main_process():
            typer.echo(f"wrote {s['rows']} rows to {out}" + (f" and {vcf_out}" if vcf_out else ""))
