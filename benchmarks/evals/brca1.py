"""BRCA1 saturation genome editing (Findlay et al. 2018 SNVs): zero-shot scores and a probe,
AUROC of LOF vs FUNC/INT.

The 3893 SNVs of Findlay2018_suppTable1.csv are mapped onto the ref_brca1 contig (pos - 41196312,
see shared/data/SOURCES.md; REF checked against the FASTA) and written to a temporary VCF, then:
1. zero-shot, through the CLI (`mambadna classify --scores llr,cosine`): AUROC of -LLR (a damaging
   variant should be less likely) and of the cosine distance between ref and alt window embeddings;
2. probe: 5-fold stratified cross-validated AUROC of a linear probe on pooled [ref, alt, alt - ref]
   window embeddings (standardised features, ridge classifier whose L2 strength is chosen by
   efficient leave-one-out inside each training fold; AUROC needs only its decision values)
   (`mambadna.load(model).embed(vcf=..., genome=...)`).
Evaluation only: the Findlay scores are free for non-profit use (SOURCES.md).

    python benchmarks/evals/brca1.py --model runs/ecoli --window 128 [--subsample 1000] [--out FILE.json]

--data defaults to ../shared/data/variants_brca1 beside the repo (or .data/ in it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

OFFSET = 41196312


def findlay_vcf(data: Path, dest: Path, subsample=None, seed: int = 0):
    """Write the Findlay SNVs as a sorted VCF on ref_brca1; returns the table (pandas)."""
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
    ap.add_argument("--data", type=Path, default=common.data_dir() / "variants_brca1")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--pooling", default="center", help="pooling of window embeddings (probe, cosine)")
    ap.add_argument("--center-width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subsample", type=int, default=None, help="random subset of N SNVs (smoke runs)")
    ap.add_argument("--out", type=Path, default=None, help="write results JSON here")
    a = ap.parse_args(argv)

    import pandas as pd
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import mambadna

    t0 = time.time()
    ref = a.data / "ref_brca1.fa"
    with tempfile.TemporaryDirectory() as td:
        vcf, tsv = Path(td) / "findlay.vcf", Path(td) / "scores.tsv"
        table = findlay_vcf(a.data, vcf, a.subsample, a.seed)
        subprocess.run([sys.executable, "-m", "mambadna.cli", "classify", "--model", str(a.model), "--out", str(tsv),
                        "--vcf", str(vcf), "--reference", str(ref), "--window", str(a.window), "--scores",
                        "llr,cosine", "--batch-size", str(a.batch_size), "--device", a.device, "--pooling",
                        a.pooling, "--center-width", str(a.center_width), "--no-progress"], check=True)
        scores = pd.read_csv(tsv, sep="\t")
        # probe features: pooled ref / alt window embeddings (rows: ref, alt per ALT allele)
        model = mambadna.load(a.model, device=a.device)
        X, index = model.embed(vcf=str(vcf), genome=mambadna.Genome(ref), window=a.window, pool=a.pooling,
                               center_width=a.center_width, batch_size=a.batch_size, return_index=True,
                               progress=False)
    is_ref = (index["allele"] == "ref").to_numpy()
    er, ea = X[is_ref], X[~is_ref]  # one ref and one alt row per SNV, in the same order
    vids = index["name"].astype(str).str.split(":").str[0].to_numpy()[~is_ref]  # name is "ID:REF>ALT"
    feat = pd.DataFrame({"vid": vids, "row": np.arange(len(ea))})
    id_col = "id" if "id" in scores.columns else scores.columns[0]
    cos_col = next(c for c in scores.columns if c.startswith("cosine"))
    df = table.merge(scores.rename(columns={id_col: "vid"})[["vid", "llr", cos_col]], on="vid").merge(feat, on="vid")
    y = (df["func_class"] == "LOF").astype(int).to_numpy()
    res = {"model": str(a.model), "window": a.window, "n": int(len(df)), "n_lof": int(y.sum()),
           "n_func_int": int((1 - y).sum()), "zero_shot_auroc_neg_llr": auroc(y, -df["llr"].to_numpy()),
           "zero_shot_auroc_cosine": auroc(y, df[cos_col].to_numpy())}
    rows = df["row"].to_numpy()
    Xd = np.concatenate([er[rows], ea[rows], ea[rows] - er[rows]], axis=1)
    cv = StratifiedKFold(5, shuffle=True, random_state=a.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # closed-form leave-one-out over the alphas (one SVD per fold): seconds, where an iterative
        # logistic regression with an inner CV took minutes at d_model 256
        probe = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-2, 4, 13)))
        p = cross_val_predict(probe, Xd, y, cv=cv, method="decision_function")
    fold_auc = [auroc(y[te], p[te]) for _, te in cv.split(Xd, y)]
    res |= {"probe_cv5_auroc": auroc(y, p), "probe_cv5_auroc_folds_mean": float(np.mean(fold_auc)),
            "probe_cv5_auroc_folds_sd": float(np.std(fold_auc)), "seconds": round(time.time() - t0, 1)}
    print(common.md_table(["score", "AUROC (LOF vs FUNC/INT)"], [
        ("zero-shot -LLR (masked marginal)", f"{res['zero_shot_auroc_neg_llr']:.3f}"),
        (f"zero-shot cosine distance ref/alt ({a.pooling} pooling)", f"{res['zero_shot_auroc_cosine']:.3f}"),
        ("probe: ridge classifier on [ref, alt, alt-ref], 5-fold CV",
         f"{res['probe_cv5_auroc']:.3f} (folds {res['probe_cv5_auroc_folds_mean']:.3f} +- "
         f"{res['probe_cv5_auroc_folds_sd']:.3f})")]))
    print(f"n = {res['n']} ({res['n_lof']} LOF, {res['n_func_int']} FUNC/INT), window {a.window}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
