"""`mambadna finetune`: argument parsing only. Every option defaults to None and
only the options the user gave reach FinetuneConfig, whose fields hold the
defaults (the recipe fills the size-aware ones)."""
from __future__ import annotations

from typing import List, Optional

import typer

HELP = """Fine-tune a head on labeled sequences (or fit a probe); writes the model, metrics.json and plots.

With no tuning flags the recipe adapts to the data (all of it recorded in metrics.json under "recipe"):

- split: test = a stratified 20% (or --test); validation = 10% of the rest, but at least min(200, 25%) sequences, so early stopping and the threshold rest on enough sequences.

- length: 30*sqrt(1000/n_train) epochs within [3, 30] (small sets need more passes), at most 20,000 steps.

- schedule: warm-up over 6% of the steps, cosine decay to 5% (the pretraining schedule).

- early stopping: ~25 validations per run (at least one per epoch) on AUROC for classification, the loss for regression and per-base tasks (smooth, unlike thresholded MCC); it may stop after a third of the steps, once 1/5 of the validations in a row brought no improvement; the best state is kept, chosen among the validations after the warm-up and the first 10% of the steps (an early state wins on a small validation split by chance).

- weight averaging: validation, and so the state kept, uses a moving average of the weights over about the last 10% of the steps so far (decay min(0.999, (1+t)/(10+t))): one run's result depends less on where its last steps happened to land (CNNProm B. subtilis, 8 seeds each: MCC 0.709 +- 0.038 without, 0.733 with; --ema 0 turns it off).

- strands: reverse-complement augmentation and averaging on (DNA is double-stranded); --no-rc-average turns both off for strand-specific data.

- binary tasks: the decision threshold that maximises MCC on the validation split is applied to the test set and saved with the head.

- binary tasks, positive class (what sensitivity, the ROC curve, the threshold and a classifier's P(...) scores refer to; recorded in metrics.json): --positive NAME, else the first --class named, else for a label column the conventional one (1 over 0; true / yes / pos / positive / case over the other label; the label that is not false / no / neg / negative / control), else the second of the sorted labels.

- faults: --out/checkpoints/ holds the run in progress (every finished seed, and the current seed after its latest checkpointed step: model, head, optimizer, RNG, batch position, early stopping; safetensors + JSON). Ctrl-C / SIGTERM checkpoint at the next step and exit 130 / 143; --resume continues bit-identically (CPU) after any interruption, kill -9 included. The finished outputs replace --out, checkpoints included.

--seeds N runs N seeds on the same split (mean +- sd and their ensemble); --baselines trains a k-mer
linear model and a CNNProm-style CNN on the same split and compares them in metrics.json and
baselines.png. --task regression reads a numeric label column; --task token learns per-base classes
from a GFF3/GenBank/BED feature file over --reference.
"""


def _parse_class(spec: str):
    from mambadna.errors import InputError

    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise InputError(None, f"--class expects NAME=FILE, got {spec!r}")
    return name.strip(), path.strip()


def register(app: typer.Typer) -> None:
    @app.command("finetune", help=HELP)
    def finetune_cmd(
        model: str = typer.Option(..., "--model", help="Pretrained model directory."),
        out: str = typer.Option(..., "--out", help="Output directory for the fine-tuned model."),
        train: Optional[str] = typer.Option(None, "--train", help="CSV/TSV (sequence,label) or labeled BED (+ --reference); with --task token a GFF3 / GenBank / BED feature file."),
        class_: Optional[List[str]] = typer.Option(None, "--class", help="NAME=FASTA, one per class (repeat)."),
        task: Optional[str] = typer.Option(None, "--task", help="classification | regression (numeric label column) | token (per-base classes) [classification]."),
        val: Optional[str] = typer.Option(None, "--val", help="Validation data [split off the training data, see above]."),
        test: Optional[str] = typer.Option(None, "--test", help="Test data [a stratified held-out split]."),
        reference: Optional[str] = typer.Option(None, "--reference", help="Reference FASTA for BED / GFF3 inputs."),
        label_column: Optional[str] = typer.Option(None, "--label-column", help="Label column name [label]."),
        feature_type: Optional[List[str]] = typer.Option(None, "--feature-type", help="--task token: a feature type to label (GFF3 type / GenBank key / BED name; repeat, first wins on overlaps) [CDS; every BED name]."),
        window: Optional[int] = typer.Option(None, "--window", help="--task token: bases per window [1024]."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps [recipe]."),
        epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs over the training data [recipe: 30*sqrt(1000/n) within 3..30]."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the split and the first run [0]."),
        seeds: Optional[int] = typer.Option(None, "--seeds", help="Runs with seeds seed..seed+N-1 on the same split: mean +- sd and ensemble [1]."),
        device: Optional[str] = typer.Option(None, "--device", help="auto|cpu|cuda [auto]."),
        freeze: Optional[bool] = typer.Option(None, "--freeze", help="Train only the head (frozen encoder)."),
        probe: Optional[bool] = typer.Option(None, "--probe", help="Logistic / ridge regression probe (CV regularisation) on frozen embeddings."),
        pooling: Optional[str] = typer.Option(None, "--pooling", help="mean|max|first|last|center [mean]."),
        center_width: Optional[int] = typer.Option(None, "--center-width", help="Window of 'center' pooling [64]."),
        layer: Optional[int] = typer.Option(None, "--layer", help="Encoder layer to pool (-1 = last) [-1]."),
        hidden: Optional[List[int]] = typer.Option(None, "--hidden", help="MLP hidden width (repeat; 0 = linear head) [64]."),
        dropout: Optional[float] = typer.Option(None, "--dropout", help="Head dropout [0.1]."),
        rc_average: Optional[bool] = typer.Option(None, "--rc-average/--no-rc-average", help="Average forward and reverse-complement predictions [on]; --no-rc-average also turns augmentation off unless --rc-augment."),
        rc_augment: Optional[bool] = typer.Option(None, "--rc-augment/--no-rc-augment", help="Random reverse complements in training [= --rc-average]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="[32]"),
        lr: Optional[float] = typer.Option(None, "--lr", help="Encoder peak learning rate [3e-4]."),
        head_lr: Optional[float] = typer.Option(None, "--head-lr", help="Head peak learning rate [1e-3]."),
        weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="[0.01]"),
        ema: Optional[float] = typer.Option(None, "--ema", help="Largest per-step decay of the weight average that validation and the kept state use; 0 = the weights as they are [0.999]."),
        val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Validation share of the training data [10%, at least min(200, 25%)]."),
        test_fraction: Optional[float] = typer.Option(None, "--test-fraction", help="[0.2]"),
        eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Steps between validations [~25 per run, at least one per epoch]."),
        patience: Optional[int] = typer.Option(None, "--patience", help="Validations without improvement before stopping [1/5 of the validations, at least 3]."),
        min_steps: Optional[int] = typer.Option(None, "--min-steps", help="No early stop before this step [a third of the steps]."),
        metric: Optional[str] = typer.Option(None, "--metric", help="Early-stopping metric: auroc|auprc|mcc|accuracy|loss; regression loss|pearson|spearman|r2; token loss|macro_mcc|macro_f1 [auto: auroc for classification, else loss]."),
        positive: Optional[str] = typer.Option(None, "--positive", help="Positive class of a binary task [the first --class named; for a label column the conventional one: 1 over 0, true/yes/pos/case over the other, else the second of the sorted labels]."),
        max_length: Optional[int] = typer.Option(None, "--max-length", help="Centre-crop longer sequences."),
        baselines: Optional[bool] = typer.Option(None, "--baselines", help="Also train a k-mer linear model and a CNNProm-style CNN on the same split."),
        cnn_epochs: Optional[int] = typer.Option(None, "--cnn-epochs", help="Epoch budget of the CNN baseline [40, as CNNProm]."),
        overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Replace an existing --out that is not an earlier finetune output, or start afresh over an unfinished run's checkpoints (deletes them)."),
        resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="Continue the unfinished run in --out/checkpoints/ (same options and data, else one line naming what differs; bit-identical to an uninterrupted run on CPU). Without checkpoints the run starts from the beginning."),
        save_every: Optional[int] = typer.Option(None, "--save-every", help="Steps between checkpoints of the seed in progress (the latest is kept) [at every validation]. Finished seeds are always kept; Ctrl-C / SIGTERM also checkpoint, at the next step."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress"),
    ) -> None:
        from mambadna.tasks.finetune import FinetuneConfig, finetune

        given = dict(
            task=task, val=val, test=test, reference=reference, label_column=label_column, window=window,
            max_steps=max_steps, epochs=epochs, seed=seed, seeds=seeds, device=device, freeze=freeze, probe=probe,
            pooling=pooling, center_width=center_width, layer=layer, dropout=dropout, rc_average=rc_average,
            rc_augment=rc_augment, batch_size=batch_size, lr=lr, head_lr=head_lr, weight_decay=weight_decay, ema=ema,
            val_fraction=val_fraction, test_fraction=test_fraction, eval_every=eval_every, patience=patience,
            min_steps=min_steps, metric=metric, positive=positive, max_length=max_length, baselines=baselines, cnn_epochs=cnn_epochs,
            overwrite=overwrite, progress=progress, resume=resume, save_every=save_every)
        kwargs = {k: v for k, v in given.items() if v is not None}
        if hidden:
            kwargs["hidden"] = [h for h in hidden if h > 0]
        if feature_type:
            kwargs["feature_types"] = list(feature_type)
        cfg = FinetuneConfig(model=model, out=out, train=train, classes=[_parse_class(c) for c in (class_ or [])],
                             **kwargs)
        m = finetune(cfg)
        typer.echo(summary(m))


def summary(m) -> str:
    """The lines `mambadna finetune` prints: test metrics, mean +- sd over
    seeds, ensemble, baselines (same keys)."""
    task = m.get("task")
    keys = {"regression": ("mse", "pearson", "spearman"),
            "token": ("accuracy", "mcc", "macro_mcc", "macro_f1", "auroc")}.get(
        task, ("accuracy", "mcc", "auroc", "auprc", "sensitivity", "specificity"))

    def line(d) -> str:
        return "  ".join(f"{k}={d[k]:.4f}" for k in keys if isinstance(d.get(k), (int, float)))

    out = [line(m) + (f"  (positive class: {m['positive']})" if m.get("positive") else "")]
    if "seeds" in m:
        s = m["seeds"]
        out.append(f"{s['n']} seeds: " + "  ".join(f"{k}={s['mean'][k]:.4f}±{s['sd'][k]:.4f}"
                                                    for k in keys if k in s["mean"]))
    if "ensemble" in m:
        out.append("ensemble: " + line(m["ensemble"]))
    for name, b in (m.get("baselines") or {}).items():
        s = b.get("seeds")
        txt = ("  ".join(f"{k}={s['mean'][k]:.4f}±{s['sd'][k]:.4f}" for k in keys if k in s["mean"])
               if s else line(b))
        out.append(f"baseline {name}: {txt}")
    return "\n".join(out)
