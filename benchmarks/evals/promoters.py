"""CNNProm promoter benchmark: sensitivity, specificity and MCC of mambadna
classifiers on a seeded, stratified held-out 20% split, with and without
pretraining.

For each species set, two classifiers with the same architecture are
fine-tuned with :func:`mambadna.finetune.finetune` on the same split:
one from a pretrained model directory (``--pretrained``), one from a random
initialisation of the same config. Results go to a markdown table (stdout)
and a JSON file. Published CNNProm figures (Umarov & Solovyev 2017) are
printed alongside.

Usage:
    python benchmarks/promoters.py --pretrained runs/ecoli --data ../shared/data/cnnprom_promoters \
        --sets ecoli bacillus --out runs/promoters [--max-steps 600] [--mode finetune|freeze|probe]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

# published CNNProm results (sensitivity, specificity, correlation coefficient)
PUBLISHED = {
    "ecoli": (0.90, 0.96, 0.84),
    "bacillus": (0.91, 0.95, 0.86),
    "arabidopsis_tata": (0.95, 0.97, 0.91),
    "arabidopsis_nontata": (0.94, 0.94, 0.86),
    "mouse_tata": (None, None, None),
}
SETS = {
    "ecoli": ("Ecoli_non_prom.fa", "Ecoli_prom.fa"),
    "bacillus": ("Bacillus_non_prom.fa", "Bacillus_prom.fa"),
    "arabidopsis_tata": ("Arabidopsis_non_prom.fa", "Arabidopsis_tata.fa"),
    "arabidopsis_nontata": ("Arabidopsis_non_prom.fa", "Arabidopsis_non_tata.fa"),
    "mouse_tata": ("Mouse_nonprom.fa", "Mouse_tata.fa"),
}


def random_init_like(model_dir: Path, dest: Path, seed: int) -> Path:
    """Save a randomly initialised model with the config of ``model_dir``."""
    import torch

    from mambadna.checkpoint import read_config, save_model
    from mambadna.config import ModelConfig
    from mambadna.model import MambaDNA

    torch.manual_seed(seed)
    cfg = ModelConfig.from_dict(read_config(model_dir)["model"])
    dest.mkdir(parents=True, exist_ok=True)
    save_model(MambaDNA(cfg), dest)
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", required=True, type=Path, help="pretrained model directory (e.g. on E. coli)")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "cnnprom_promoters")
    ap.add_argument("--sets", nargs="+", default=["ecoli", "bacillus"], choices=sorted(SETS))
    ap.add_argument("--out", type=Path, default=Path("runs/promoters"))
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    from mambadna.finetune import FinetuneConfig, finetune

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as td:
        rand_dir = random_init_like(args.pretrained, Path(td) / "random", args.seed)
        for name in args.sets:
            neg, pos = SETS[name]
            for init, model_dir in (("pretrained", args.pretrained), ("random init", rand_dir)):
                t0 = time.time()
                cfg = FinetuneConfig(
                    model=str(model_dir), out=str(args.out / f"{name}_{init.replace(' ', '_')}"),
                    classes=[("non_promoter", str(args.data / neg)), ("promoter", str(args.data / pos))],
                    positive="promoter", test_fraction=0.2, seed=args.seed, device=args.device,
                    freeze=args.mode == "freeze", probe=args.mode == "probe", max_steps=args.max_steps,
                    epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr,
                    pooling=args.pooling, rc_average=args.rc_average, progress=False)
                m = finetune(cfg)
                results.append({"set": name, "init": init, "mode": args.mode, "sensitivity": m["sensitivity"],
                                "specificity": m["specificity"], "mcc": m["mcc"], "auroc": m["auroc"],
                                "n_train": m["n_train"], "n_test": m["n_test"], "steps": m.get("steps"),
                                "seconds": round(time.time() - t0, 1)})
    (args.out / "promoters.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"| set | init | mode | sensitivity | specificity | MCC | AUROC | n test | CNNProm Sn/Sp/CC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        pub = PUBLISHED.get(r["set"])
        pub_s = "/".join("n/a" if v is None else f"{v:.2f}" for v in pub) if pub else "n/a"
        print(f"| {r['set']} | {r['init']} | {r['mode']} | {r['sensitivity']:.3f} | {r['specificity']:.3f} | "
              f"{r['mcc']:.3f} | {r['auroc']:.3f} | {r['n_test']} | {pub_s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
