"""`mambadna finetune`: argument parsing only."""
from __future__ import annotations

from typing import List, Optional

import typer


def _parse_class(spec: str):
    from mambadna.errors import InputError

    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise InputError(None, f"--class expects NAME=FILE, got {spec!r}")
    return name.strip(), path.strip()


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune_cmd(
        model: str = typer.Option(..., "--model", help="Pretrained model directory."),
        out: str = typer.Option(..., "--out", help="Output directory for the fine-tuned classifier."),
        train: Optional[str] = typer.Option(None, "--train", help="CSV/TSV (sequence,label) or labeled BED (+ --reference)."),
        class_: Optional[List[str]] = typer.Option(None, "--class", help="NAME=FASTA, one per class (repeat)."),
        val: Optional[str] = typer.Option(None, "--val", help="Validation data (default: seeded stratified split)."),
        test: Optional[str] = typer.Option(None, "--test", help="Test data (default: seeded stratified held-out split)."),
        reference: Optional[str] = typer.Option(None, "--reference", help="Reference FASTA for BED inputs."),
        label_column: Optional[str] = typer.Option(None, "--label-column", help="Label column name [label]."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps."),
        epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs over the training data [3]."),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("auto", "--device", help="auto|cpu|cuda."),
        freeze: bool = typer.Option(False, "--freeze", help="Train only the head (frozen encoder)."),
        probe: bool = typer.Option(False, "--probe", help="Logistic-regression probe (CV regularisation) on frozen embeddings."),
        pooling: str = typer.Option("mean", "--pooling", help="mean|max|first|last|center."),
        center_width: int = typer.Option(64, "--center-width", help="Window of 'center' pooling."),
        layer: int = typer.Option(-1, "--layer", help="Encoder layer to pool (-1 = last)."),
        hidden: Optional[List[int]] = typer.Option(None, "--hidden", help="MLP hidden width (repeat; 0 = linear head) [64]."),
        dropout: float = typer.Option(0.1, "--dropout"),
        rc_average: bool = typer.Option(False, "--rc-average", help="Average forward and reverse-complement predictions."),
        rc_augment: Optional[bool] = typer.Option(None, "--rc-augment/--no-rc-augment", help="Random RC during training [= --rc-average]."),
        batch_size: int = typer.Option(32, "--batch-size"),
        lr: float = typer.Option(3e-4, "--lr", help="Encoder learning rate."),
        head_lr: float = typer.Option(1e-3, "--head-lr", help="Head learning rate."),
        val_fraction: float = typer.Option(0.1, "--val-fraction"),
        test_fraction: float = typer.Option(0.2, "--test-fraction"),
        eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Steps between validations."),
        patience: int = typer.Option(5, "--patience", help="Validations without improvement before stopping."),
        metric: str = typer.Option("auto", "--metric", help="auroc|auprc|mcc|accuracy|loss (auto: mcc; auroc for multilabel)."),
        positive: Optional[str] = typer.Option(None, "--positive", help="Positive class of a binary task."),
        max_length: Optional[int] = typer.Option(None, "--max-length", help="Centre-crop longer sequences."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Fine-tune a classifier (or fit a probe) on labeled sequences; writes metrics.json and plots."""
        from mambadna.tasks.finetune import FinetuneConfig, finetune

        hid = [h for h in (hidden or [64]) if h > 0]
        cfg = FinetuneConfig(
            model=model, out=out, train=train, classes=[_parse_class(c) for c in (class_ or [])],
            val=val, test=test, reference=reference, label_column=label_column, max_steps=max_steps,
            epochs=epochs, seed=seed, device=device, freeze=freeze, probe=probe, pooling=pooling,
            center_width=center_width, layer=layer, hidden=hid, dropout=dropout, rc_average=rc_average,
            rc_augment=rc_augment, batch_size=batch_size, lr=lr, head_lr=head_lr, val_fraction=val_fraction,
            test_fraction=test_fraction, eval_every=eval_every, patience=patience, metric=metric,
            positive=positive, max_length=max_length, progress=progress)
        m = finetune(cfg)
        keys = ("accuracy", "mcc", "auroc", "auprc", "sensitivity", "specificity")
        typer.echo("  ".join(f"{k}={m[k]:.4f}" for k in keys if m.get(k) is not None))
