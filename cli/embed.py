"""`mambadna embed`: argument parsing only; the work is mambadna.tasks.embed.embed_file."""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("embed")
    def embed_cmd(
        model: str = typer.Option(..., "--model", help="Model directory (config.json + model.safetensors)."),
        out: str = typer.Option(..., "--out", help="Output file: .npz or .parquet."),
        fasta: Optional[str] = typer.Option(None, "--fasta", help="FASTA of sequences (one row each)."),
        bed: Optional[str] = typer.Option(None, "--bed", help="BED of intervals (needs --reference)."),
        bam: Optional[str] = typer.Option(None, "--bam", help="BAM/CRAM: one row per read."),
        vcf: Optional[str] = typer.Option(None, "--vcf", help="VCF/BCF: ref and alt window per ALT allele "
                                                                 "(needs --reference)."),
        reference: Optional[str] = typer.Option(None, "--reference", help="Reference FASTA for --bed / --vcf "
                                                                          "(and CRAM)."),
        region: Optional[str] = typer.Option(None, "--region", help="BAM region, e.g. chr1:1000-2000."),
        window: int = typer.Option(1024, "--window", help="Variant window length (--vcf)."),
        min_mapq: int = typer.Option(0, "--min-mapq", help="Minimum mapping quality (--bam)."),
        pool: str = typer.Option("mean", "--pool", help="mean | center | first | last | max | none "
                                                       "(none = per-token arrays)."),
        layer: int = typer.Option(-1, "--layer", help="Block to read out (negative counts from the end)."),
        rc_average: bool = typer.Option(False, "--rc-average", help="Average with the reverse complement."),
        chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Positions per device step for "
                                                                           "long sequences (exact either way)."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per batch."),
        center_width: int = typer.Option(64, "--center-width", help="Window of --pool center."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    ) -> None:
        """Write embeddings plus an index table (name, contig, start, end, strand, allele).

        .npz: arrays embeddings (N, D) -- per token (total, D) with offsets (N+1,) --
        and one array per index column; np.load(..., allow_pickle=False) reads it.
        .parquet: index columns and an 'embedding' list column, one row per sequence.
        """
        from mambadna.tasks.embed import EmbedFileConfig, embed_file

        cfg = EmbedFileConfig(model=model, out=out, fasta=fasta, bed=bed, bam=bam, vcf=vcf,
                              reference=reference, region=region, window=window, min_mapq=min_mapq,
                              pool=pool, layer=layer, rc_average=rc_average, chunk_size=chunk_size,
                              batch_size=batch_size, center_width=center_width, device=device,
                              progress=progress)
        res = embed_file(cfg)
        typer.echo(f"wrote {res['rows']} rows x {res['dim']} ({res['pool']}) to {res['out']}", err=True)
