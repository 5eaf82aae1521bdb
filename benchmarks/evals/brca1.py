"""BRCA1 saturation genome editing benchmark (Findlay et al. 2018 SNVs).

The 3893 SNVs of ``Findlay2018_suppTable1.csv`` are mapped onto the
``ref_brca1`` contig (pos − 41196312, see shared/data/SOURCES.md; REF is
checked against the FASTA) and written to a temporary VCF, then:

1. zero-shot: ``mambadna classify`` (masked-marginal LLR for masked-LM
   models, next-token LLR for causal ones); AUROC of LOF vs FUNC/INT for the
   score −LLR (a damaging variant should be less likely) and for the
   cosine distance between ref and alt window embeddings;
2. probe: 5-fold stratified cross-validated AUROC of a logistic regression
   (standardised features, inner CV of the L2 strength) on pooled
   [ref, alt, alt − ref] window embeddings.

Evaluation only: the Findlay scores are free for non-profit use (SOURCES.md).

Usage:
    python benchmarks/brca1.py --model runs/model --data ../shared/data/variants_brca1 [--window 256]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OFFSET = 41196312


def findlay_vcf(data: Path, dest: Path, subsample=None, seed: int = 0) -> "object":
    """Write the Findlay SNVs as a sorted VCF on ref_brca1; returns the table."""
    import pandas as pd

    df = pd.read_csv(data / "Findlay2018_suppTable1.csv", header=2, encoding="utf-8-sig")
    df = df.rename(columns={"position (hg19)": "pos_hg19", "func.class": "func_class"})
    df["pos"] = df["pos_hg19"].astype(int) - OFFSET
    if subsample is not None and subsample < len(df):
        df = df.sample(n=subsample, random_state=seed)
    df = df.sort_values(["pos", "alt"]).reset_index(drop=True)
    df["vid"] = [f"F{i}" for i in range(len(df))]
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=ref_brca1,length=81188>",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    lines += [f"ref_brca1\t{p}\t{v}\t{r}\t{a}\t.\t.\t." for p, v, r, a in
              zip(df["pos"], df["vid"], df["reference"], df["alt"])]
    dest.write_text("\n".join(lines) + "\n")
    return df


def auroc(y, s) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="pretrained (masked-LM or causal) model directory")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "variants_brca1")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--pooling", default="center", help="pooling of window embeddings (probe, cosine)")
    ap.add_argument("--center-width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subsample", type=int, default=None, help="random subset of N SNVs (smoke runs)")
    ap.add_argument("--out", type=Path, default=None, help="write results JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    import pandas as pd
    import torch
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mambadna.classify import ClassifyConfig, Scorer, classify
    from mambadna.genome import Genome
    from mambadna.train import resolve_device
    from mambadna.variants import iter_variant_windows

    t0 = time.time()
    with tempfile.TemporaryDirectory() as td:
        vcf = Path(td) / "findlay.vcf"
        table = findlay_vcf(args.data, vcf, args.subsample, args.seed)
        tsv = Path(td) / "scores.tsv"
        classify(ClassifyConfig(model=str(args.model), out=str(tsv), vcf=str(vcf),
                                reference=str(args.data / "ref_brca1.fa"), window=args.window,
                                batch_size=args.batch_size, device=args.device, pooling=args.pooling,
                                center_width=args.center_width, llr=True, progress=True))
        scores = pd.read_csv(tsv, sep="\t")
        # probe features: pooled ref / alt embeddings, streamed in batches
        device = resolve_device(args.device)
        scorer = Scorer(str(args.model), device, pooling=args.pooling, center_width=args.center_width)
        genome = Genome(args.data / "ref_brca1.fa")
        feats, ids, batch = [], [], []

        def run(b):
            r = torch.as_tensor(np.stack([w.ref_ids for w in b]).astype(np.int64), device=device)
            a = torch.as_tensor(np.stack([w.alt_ids for w in b]).astype(np.int64), device=device)
            er, ea = scorer.embed(r).cpu().numpy(), scorer.embed(a).cpu().numpy()
            feats.append(np.concatenate([er, ea, ea - er], axis=1))
            ids.extend(w.id for w in b)

        for w in iter_variant_windows(vcf, genome, window=args.window):
            batch.append(w)
            if len(batch) == args.batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
    X = np.concatenate(feats)
    feat = pd.DataFrame({"vid": ids}).reset_index().rename(columns={"index": "row"})
    df = table.merge(scores.rename(columns={"id": "vid"})[["vid", "llr", "cosine_distance"]], on="vid")
    df = df.merge(feat, on="vid")
    y = (df["func_class"] == "LOF").astype(int).to_numpy()
    res = {
        "model": str(args.model), "window": args.window, "n": int(len(df)),
        "n_lof": int(y.sum()), "n_func_int": int((1 - y).sum()),
        "zero_shot_auroc_neg_llr": auroc(y, -df["llr"].to_numpy()),
        "zero_shot_auroc_cosine": auroc(y, df["cosine_distance"].to_numpy()),
    }
    Xd = X[df["row"].to_numpy()]
    cv = StratifiedKFold(5, shuffle=True, random_state=args.seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=8, cv=3, max_iter=3000, scoring="roc_auc"))
        p = cross_val_predict(probe, Xd, y, cv=cv, method="predict_proba")[:, 1]
    fold_auc = [auroc(y[te], p[te]) for _, te in cv.split(Xd, y)]
    res["probe_cv5_auroc"] = auroc(y, p)
    res["probe_cv5_auroc_folds_mean"] = float(np.mean(fold_auc))
    res["probe_cv5_auroc_folds_sd"] = float(np.std(fold_auc))
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
