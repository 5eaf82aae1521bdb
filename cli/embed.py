"""`mambadna embed`: argument parsing only; the work is mambadna.tasks.embed.embed_file."""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("embed")
    def embed_cmd(
        model: str = typer.Option(..., "--model", help="Model directory (config.json + model.safetensors)."),
        out: str = typer.Option(..., "--out", help="Output file: .npz or .parquet."),
        fasta: Optional[str] = typer.Option(None, "--fasta", help="FASTA of sequences (one row each). LF or CRLF; A C G T U N and IUPAC R Y K M S W B D H V in either case (IUPAC codes and N become the N token, U becomes T, soft-masked lower case reads as upper case); any other character is an error naming the record and offset."),
        bed: Optional[str] = typer.Option(None, "--bed", help="BED of intervals (needs --reference; 0-based half-open, start < end <= contig length, else an error naming the line)."),
        bam: Optional[str] = typer.Option(None, "--bam", help="BAM/CRAM: one row per read."),
        vcf: Optional[str] = typer.Option(None, "--vcf", help="VCF/BCF: ref and alt window per ALT allele "
                                                                 "(needs --reference)."),
        reference: Optional[str] = typer.Option(None, "--reference", help="Reference FASTA for --bed / --vcf "
                                                                          "(and CRAM)."),
        region: Optional[str] = typer.Option(None, "--region", help="BAM region, e.g. chr1:1000-2000."),
        window: Optional[int] = typer.Option(None, "--window", help="Variant window length (--vcf) [1024]."),
        min_mapq: Optional[int] = typer.Option(None, "--min-mapq", help="Minimum mapping quality (--bam) [0]."),
        pool: Optional[str] = typer.Option(None, "--pool", help="mean | center | first | last | max | none "
                                                                "(none = per-token arrays) [mean]."),
        layer: Optional[int] = typer.Option(None, "--layer", help="Block to read out (negative counts from the end) [-1]."),
        rc_average: Optional[bool] = typer.Option(None, "--rc-average", help="Average with the reverse complement."),
        chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Positions per device step for "
                                                                           "long sequences (exact either way)."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per batch."),
        center_width: Optional[int] = typer.Option(None, "--center-width", help="Window of --pool center [64]."),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda [auto]."),
        precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 (autocast on CUDA) [fp32]."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr."),
        overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Replace an existing --out that is not an earlier embed output."),
        shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Records per shard: the unit split across processes under torchrun and reused when an interrupted run is started again [from the token budget]."),
        gpus: Optional[int] = typer.Option(None, "--gpus", help="Run N processes under torchrun, one GPU each (with --device cpu: N CPU processes); the records are split across them and merged into the one output."),
    ) -> None:
        """Write embeddings plus an index table (name, contig, start, end, strand, allele).

        .npz: arrays embeddings (N, D) -- per token (total, D) with offsets (N+1,) --
        and one array per index column; np.load(..., allow_pickle=False) reads it.
        .parquet: index columns and an 'embedding' list column, one row per sequence.
        """
        from mambadna.tasks.embed import EmbedFileConfig, embed_file

        given = {k: v for k, v in locals().items() if v is not None and k not in ("EmbedFileConfig", "embed_file", "gpus")}
        from mambadna.cli.invocation import invocation_args
        from mambadna.components.distributed import is_main_process, launched

        cfg = EmbedFileConfig(**given)
        if launched(gpus, device, invocation_args()):
            return
        res = embed_file(cfg)
        if is_main_process():
            typer.echo(f"wrote {res['rows']} rows x {res['dim']} ({res['pool']}) to {res['out']}", err=True)
