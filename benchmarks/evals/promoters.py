"""CNNProm promoter sets: sensitivity, specificity, MCC and AUROC of mambadna classifiers on a
seeded, stratified held-out 20% split, pretrained against a random initialisation of the same
config (the baseline, side by side), with the published CNNProm figures alongside.

Each classifier is trained by the CLI (`mambadna finetune`, its metrics.json read back), so the
numbers are the ones users get.

    python benchmarks/evals/promoters.py --pretrained runs/ecoli --sets ecoli bacillus --epochs 6 \\
        --lr 2e-3 --head-lr 2e-3 [--mode finetune|freeze|probe] [--out benchmarks/out/promoters]
    python benchmarks/evals/promoters.py --pretrained runs/tiny --sets ecoli --subsample 40 --max-steps 2 --device cpu

--data defaults to ../shared/data/cnnprom_promoters beside the repo (or .data/ in it).
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

# published CNNProm results (sensitivity, specificity, correlation coefficient), Umarov & Solovyev 2017
PUBLISHED = {"ecoli": (0.90, 0.96, 0.84), "bacillus": (0.91, 0.95, 0.86), "arabidopsis_tata": (0.95, 0.97, 0.91),
             "arabidopsis_nontata": (0.94, 0.94, 0.86), "mouse_tata": (None, None, None)}
SETS = {"ecoli": ("Ecoli_non_prom.fa", "Ecoli_prom.fa"), "bacillus": ("Bacillus_non_prom.fa", "Bacillus_prom.fa"),
        "arabidopsis_tata": ("Arabidopsis_non_prom.fa", "Arabidopsis_tata.fa"),
        "arabidopsis_nontata": ("Arabidopsis_non_prom.fa", "Arabidopsis_non_tata.fa"),
        "mouse_tata": ("Mouse_nonprom.fa", "Mouse_tata.fa")}


def random_init_like(model_dir: Path, dest: Path, seed: int) -> Path:
    """A randomly initialised model with the config of model_dir, saved to dest."""
    import torch

    import mambadna
    from mambadna.components.checkpoint import save_model  # lazy: library internals
    from mambadna.model import MambaDNA

    cfg = mambadna.load(model_dir, device="cpu").config
    torch.manual_seed(seed)
    dest.mkdir(parents=True, exist_ok=True)
    save_model(MambaDNA(cfg), dest)
    return dest


def subsample_fasta(src: Path, dest: Path, n: int, seed: int) -> Path:
    recs, cur = [], None
    for line in src.read_text().splitlines():
        if line.startswith(">"):
            cur = [line]
            recs.append(cur)
        elif cur is not None:
            cur.append(line)
    random.Random(seed).shuffle(recs)
    dest.write_text("\n".join("\n".join(r) for r in recs[:n]) + "\n")
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", required=True, type=Path, help="pretrained model directory (e.g. on E. coli)")
    ap.add_argument("--data", type=Path, default=common.data_dir() / "cnnprom_promoters")
    ap.add_argument("--sets", nargs="+", default=["ecoli", "bacillus"], choices=sorted(SETS))
    ap.add_argument("--out", type=Path, default=common.OUT / "promoters")
    ap.add_argument("--mode", choices=["finetune", "freeze", "probe"], default="finetune")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--rc-average", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--subsample", type=int, default=None, help="N random sequences per class (smoke runs)")
    a = ap.parse_args(argv)

    a.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as td:
        rand_dir = random_init_like(a.pretrained, Path(td) / "random", a.seed)
        for name in a.sets:
            files = [a.data / f for f in SETS[name]]
            if a.subsample:
                files = [subsample_fasta(f, Path(td) / f"{name}_{i}.fa", a.subsample, a.seed) for i, f in enumerate(files)]
            for init, model_dir in (("pretrained", a.pretrained), ("random init", rand_dir)):
                out = a.out / f"{name}_{init.replace(' ', '_')}"
                cmd = [sys.executable, "-m", "mambadna.cli", "finetune", "--model", str(model_dir), "--out", str(out),
                       "--class", f"non_promoter={files[0]}", "--class", f"promoter={files[1]}",
                       "--positive", "promoter", "--test-fraction", "0.2", "--seed", str(a.seed),
                       "--device", a.device, "--batch-size", str(a.batch_size), "--lr", str(a.lr),
                       "--head-lr", str(a.head_lr), "--pooling", a.pooling, "--no-progress"]
                cmd += ["--freeze"] if a.mode == "freeze" else ["--probe"] if a.mode == "probe" else []
                cmd += ["--max-steps", str(a.max_steps)] if a.max_steps is not None else []
                cmd += ["--epochs", str(a.epochs)] if a.epochs is not None else []
                cmd += ["--rc-average"] if a.rc_average else []
                t0 = time.time()
                print(f"== {name} / {init}: mambadna {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
                subprocess.run(cmd, check=True)
                m = json.loads((out / "metrics.json").read_text())
                results.append({"set": name, "init": init, "mode": a.mode,
                                **{k: m.get(k) for k in ("sensitivity", "specificity", "mcc", "auroc", "n_train",
                                                         "n_test", "steps")},
                                "seconds": round(time.time() - t0, 1)})
    (a.out / "promoters.json").write_text(json.dumps(results, indent=2) + "\n")
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(common.md_table(["set", "init", "mode", "sensitivity", "specificity", "MCC", "AUROC", "n test",
                           "CNNProm Sn / Sp / CC"],
                          [(r["set"], r["init"], r["mode"], f(r["sensitivity"]), f(r["specificity"]), f(r["mcc"]),
                            f(r["auroc"]), r["n_test"],
                            " / ".join("n/a" if v is None else f"{v:.2f}" for v in PUBLISHED.get(r["set"], ())))
                           for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
