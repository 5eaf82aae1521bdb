"""`mambadna pretrain`: argument parsing only."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    def pretrain_cmd(
        genome: Optional[List[Path]] = typer.Argument(None, help="Reference FASTA(s) (plain, gzip or bgzip), or a .txt list of them; several genomes are sampled together, each holding out its own validation part. Each FASTA is checked once up front (cached): LF or CRLF lines; sequence lines may hold A C G T U N and the IUPAC codes R Y K M S W B D H V in either case (IUPAC codes and N become the N token, U becomes T, lower case (soft-masked) reads as upper case); any other character ('-', '*', '@', digits), a duplicate record name or a stale .fai is reported before training."),
        genome_weights: Optional[str] = typer.Option(None, "--genome-weights", help="Several genomes: 'length' (windows in proportion to genome length), 'equal', or one weight each, comma-separated [length]."),
        out: Optional[str] = typer.Option(None, "--out", help="Output directory [runs/pretrain]. Locked while the run writes it; a fresh run refuses a folder holding another run's checkpoints (see --resume, --overwrite)."),
        config: Optional[Path] = typer.Option(None, "--config", help="TOML file with any of these options."),
        seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Bases per window [1024]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global sequences per optimizer step [8]."),
        micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", help="Per-device micro-batch (gradient accumulation)."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps [1000]."),
        max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-clock budget (minutes, from the start): the run ends at the last step that fits and the learning-rate schedule runs over the time instead of the steps, so it completes whatever the speed; --max-steps becomes a cap (none unless given) [off]."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate, a finite number > 0 [1e-3]."),
        warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="LR warm-up steps [5% of max-steps]."),
        d_model: Optional[int] = typer.Option(None, "--d-model", help="Model width [128]."),
        n_layers: Optional[int] = typer.Option(None, "--n-layers", help="Mamba blocks [4]."),
        d_state: Optional[int] = typer.Option(None, "--d-state", help="SSM state size [16]."),
        bidirectional: Optional[bool] = typer.Option(None, "--bidirectional/--causal", help="BiMamba + masked-LM, or causal + next-token [bidirectional]."),
        rc_equivariant: Optional[bool] = typer.Option(None, "--rc-equivariant/--no-rc-equivariant"),
        device: Optional[str] = typer.Option(None, "--device", help="auto|cpu|cuda."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the data order, masking and initialisation; resuming needs the same seed [0]."),
        regions: Optional[str] = typer.Option(None, "--regions", help="BED of regions to draw windows from."),
        val_contigs: Optional[List[str]] = typer.Option(None, "--val-contigs", help="Contig held out for validation (repeatable)."),
        val_bed: Optional[str] = typer.Option(None, "--val-bed", help="BED of validation regions."),
        val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Hold out the last fraction of each contig."),
        eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Steps between validations (with --val-*) [200]."),
        eval_batches: Optional[int] = typer.Option(None, "--eval-batches", help="Validation batches per evaluation [4]."),
        save_every: Optional[int] = typer.Option(None, "--save-every", help="Steps between checkpoints (checkpoint-<step>/ in --out; the last 2 are kept) [500]. Ctrl-C / SIGTERM also checkpoint, at the next step."),
        resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="Continue from the latest checkpoint in --out (it must come from the same options; bit-identical to an uninterrupted run on CPU)."),
        overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Start afresh in an --out that holds an earlier run (its checkpoints, model and metrics are deleted; other files are kept)."),
        checkpoint_layers: Optional[bool] = typer.Option(None, "--checkpoint-layers/--no-checkpoint-layers", help="Per-layer activation checkpointing."),
        seq_len_warmup: Optional[bool] = typer.Option(None, "--seq-len-warmup/--no-seq-len-warmup", help="Start short and double up to --seq-len."),
        rc_augment: Optional[bool] = typer.Option(None, "--rc-augment/--no-rc-augment"),
        bam: Optional[str] = typer.Option(None, "--bam", help="Train on reads of a BAM instead of a genome."),
        num_workers: Optional[int] = typer.Option(None, "--num-workers"),
        layer_chunk: Optional[int] = typer.Option(None, "--layer-chunk", help="Train each layer along the length in exact chunks of N positions (carried state; bounds activation memory at 2^20). 0 off; default: off (256 on a CPU without numba, where the scan's gradient is the PyTorch reference)."),
        residual_bf16: Optional[bool] = typer.Option(None, "--residual-bf16/--residual-fp32", help="Residual stream dtype on CUDA (bf16 saves memory at 2^20)."),
        scan_state_gib: Optional[float] = typer.Option(None, "--scan-state-gib", help="GPU memory (GiB) the scans may keep from forward to backward (faster backward); default 1/8 of the GPU; 0: recompute."),
        stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop after this step (checkpointed), resume later with --resume."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar."),
        gpus: Optional[int] = typer.Option(None, "--gpus", help="Launch torchrun with this many GPUs."),
    ) -> None:
        """Self-supervised pretraining on one reference genome or several (`mambadna pretrain a.fa b.fa.gz c.fna.gz`)."""
        from mambadna.tasks.pretrain import PretrainConfig, launch_or_pretrain

        overrides = dict(
            genome=None if not genome else ([str(g) for g in genome] if len(genome) > 1 else str(genome[0])),
            genome_weights=genome_weights, out=out, seq_len=seq_len, batch_size=batch_size,
            micro_batch_size=micro_batch_size, max_steps=max_steps, max_minutes=max_minutes, lr=lr, warmup_steps=warmup_steps,
            d_model=d_model, n_layers=n_layers, d_state=d_state, bidirectional=bidirectional,
            rc_equivariant=rc_equivariant, device=device, seed=seed, regions=regions,
            val_contigs=tuple(val_contigs) if val_contigs else None, val_bed=val_bed,
            val_fraction=val_fraction, eval_every=eval_every, eval_batches=eval_batches, save_every=save_every, resume=resume,
            checkpoint_layers=checkpoint_layers, seq_len_warmup=seq_len_warmup,
            rc_augment=rc_augment, bam=bam, num_workers=num_workers, stop_after=stop_after, overwrite=overwrite,
            residual_bf16=residual_bf16, progress=progress, layer_chunk=layer_chunk,
            scan_state_gib=scan_state_gib)
        cfg = (PretrainConfig.from_toml(str(config), **overrides) if config
               else PretrainConfig.from_mapping({}, overrides))
        launch_or_pretrain(cfg, gpus=gpus)
