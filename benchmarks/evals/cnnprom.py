"""CNNProm promoter table: mambadna (pretrained and random init) against the in-house CNN and k-mer
baselines on the same split, N seeds, mean ± sd, beside the published CNNProm figures.

For each of the five CNNProm sets (one FASTA per class, ../shared/data/cnnprom_promoters), with the
**default** `mambadna finetune` recipe and a seeded stratified held-out 20% test split:
1. `finetune --seeds N --baselines` from the pretrained model: its MCC over N seeds, plus the k-mer
   logistic regression and the CNNProm-style CNN (N seeds) trained on exactly the same train/val/test
   split (`metrics.json` "baselines");
2. `finetune --seeds N` from a random initialisation of the same architecture.
Prints a markdown table (MCC mean ± sd; pretrained − CNN; AUROC; published CNNProm Sn/Sp/CC, which
used its own protocol) and writes `cnnprom.md`, `cnnprom.json` and the figure `cnnprom.png` to --out.

    python benchmarks/evals/cnnprom.py --pretrained runs/genomes3 [--seeds 3] [--device cuda]
    python benchmarks/evals/cnnprom.py --pretrain-steps 3000 ...   # pretrain first, on every genome of
                                                                   # shared/data/genomes at once
    python benchmarks/evals/cnnprom.py --pretrain-minutes 12 --seeds 3 --jobs 5 --device cuda   # the README run
    python benchmarks/evals/cnnprom.py --device cpu --quick        # script check: tiny model, 150 seqs/set

`--set KEY=VALUE` (repeatable) overrides a FinetuneConfig field for every run (e.g. --set lr=1e-3;
--set freeze=true or --set probe=true for a frozen encoder or a linear probe).
`--reuse` takes the runs already finished in --out, so the sets can be spread over several calls.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

# CNNProm (Umarov & Solovyev 2017, PLoS One): sensitivity, specificity, correlation coefficient (= MCC)
PUBLISHED = {
    "ecoli": (0.90, 0.96, 0.84),
    "bacillus": (0.91, 0.95, 0.86),
    "arabidopsis_tata": (0.95, 0.97, 0.91),
    "arabidopsis_nontata": (0.94, 0.94, 0.86),
    "mouse_tata": (0.97, 0.97, 0.93),
}
SETS = {  # (negative FASTA, positive FASTA)
    "ecoli": ("Ecoli_non_prom.fa", "Ecoli_prom.fa"),
    "bacillus": ("Bacillus_non_prom.fa", "Bacillus_prom.fa"),
    "arabidopsis_tata": ("Arabidopsis_non_prom.fa", "Arabidopsis_tata.fa"),
    "arabidopsis_nontata": ("Arabidopsis_non_prom.fa", "Arabidopsis_non_tata.fa"),
    "mouse_tata": ("Mouse_nonprom.fa", "Mouse_tata.fa"),
}
MARGIN = 0.03  # the bar: pretrained mean MCC >= CNN mean MCC + 0.03


def random_init_like(model_dir: Path, dest: Path, seed: int) -> Path:
    """A randomly initialised model with the architecture of ``model_dir``."""
    import torch

    from mambadna.components.checkpoint import read_config, save_model
    from mambadna.model.config import ModelConfig
    from mambadna.model.encoder import MambaDNA

    torch.manual_seed(seed)
    cfg = ModelConfig.from_dict(read_config(model_dir)["model"])
    dest.mkdir(parents=True, exist_ok=True)
    save_model(MambaDNA(cfg), dest)
    return dest


def pretrain_genomes(out: Path, steps: int, device: str, quick: bool, minutes: float = 0.0) -> Path:
    """Pretrain on every genome FASTA of shared/data/genomes at once (sampled by length, 1% of each
    contig held out for validation), for ``steps`` or, with ``minutes``, for that wall-clock budget."""
    from mambadna.model.config import ModelConfig
    from mambadna.tasks.pretrain import PretrainConfig, pretrain

    genomes = sorted(str(p) for p in (common.data_dir() / "genomes").glob("*.f*a.gz"))
    shape = dict(d_model=32, n_layers=2, d_state=8) if quick else dict(d_model=256, n_layers=8, d_state=16)
    cfg = PretrainConfig.of(genome=genomes, out=str(out), seq_len=128 if quick else 1024,
                         batch_size=8 if quick else 64, lr=2e-3, device=device,
                         **({"max_minutes": minutes} if minutes else {"max_steps": steps}),
                         val_fraction=0.01, eval_every=1000 if minutes else max(1, steps // 10), save_every=10 ** 9,
                         progress=False, model=ModelConfig(bidirectional=True, **shape))
    t0 = time.time()
    pretrain(cfg)
    logging.getLogger("mambadna").info("pretrained on %d genomes in %.1f min", len(genomes), (time.time() - t0) / 60)
    return out


def subsample(src: Path, dest: Path, n: int, seed: int = 0) -> Path:
    """The first-n-after-shuffle records of a FASTA (for --quick)."""
    import numpy as np

    from mambadna.io.labeled import read_fasta_records

    recs = list(read_fasta_records(src))
    idx = np.random.default_rng(seed).permutation(len(recs))[:n]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(f">{recs[i][0]}\n{recs[i][1]}\n" for i in sorted(idx)))
    return dest


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _ms(block, key="mcc"):
    """(mean, sd) of a metric over seeds from a metrics.json block (sd 0 for one run)."""
    s = block.get("seeds")
    if s and key in s["mean"]:
        return s["mean"][key], s["sd"][key]
    v = block.get(key)
    return (v, None) if v is not None else (None, None)


def _pm(ms) -> str:
    m, s = ms
    return "n/a" if m is None else f"{m:.3f}" if s is None else f"{m:.3f} ± {s:.3f}"


def run_set(name: str, data: Path, pretrained: Path, random_dir: Path, out: Path, args, overrides) -> dict:
    from mambadna.tasks.finetune import FinetuneConfig, finetune

    neg, pos = SETS[name]
    negf, posf = data / neg, data / pos
    if args.quick:
        negf = subsample(negf, out / "data" / f"{name}_neg.fa", 100)
        posf = subsample(posf, out / "data" / f"{name}_pos.fa", 50)
    base = dict(classes=[("non_promoter", str(negf)), ("promoter", str(posf))], positive="promoter",
                device=args.device, progress=False, overwrite=True)
    if args.quick:
        base.update(max_steps=4, cnn_epochs=2)
    base.update(overrides)
    res = {"set": name}

    def run(model, sub, **kw):
        done = out / name / sub / "metrics.json"
        if args.reuse and done.is_file():  # a finished run of an earlier call
            return json.loads(done.read_text())
        return finetune(FinetuneConfig(model=str(model), out=str(out / name / sub), **kw, **base))

    t0 = time.time()
    m = run(pretrained, "pretrained", baselines=True, seeds=args.seeds)
    res["seconds_pretrained"] = round(time.time() - t0, 1)
    t0 = time.time()
    r = run(random_dir, "random_init", seeds=args.random_seeds or args.seeds)
    res["seconds_random"] = round(time.time() - t0, 1)
    res.update(n_train=m["n_train"], n_val=m["n_val"], n_test=m["n_test"], recipe=m["recipe"])
    for label, block in (("pretrained", m), ("random_init", r), ("cnn", m["baselines"]["cnn"]),
                         ("kmer", m["baselines"]["kmer"])):
        res[label] = {k: _ms(block, k) for k in ("mcc", "auroc", "sensitivity", "specificity", "accuracy")}
    res["ensemble_mcc"] = (m.get("ensemble") or {}).get("mcc")
    # per seed (test metrics at each seed's validation-chosen threshold): where a mean's spread comes from
    res["pretrained_runs"] = (m.get("seeds") or {}).get("runs") or [
        {k: m.get(k) for k in ("mcc", "auroc", "threshold")}]
    res["published"] = PUBLISHED.get(name)
    return res


def run_parallel(args, pretrained: Path, argv) -> None:
    """Each set in its own process (``--reuse`` into the same --out), at most ``args.jobs`` at once;
    logs in OUT/NAME.log. The caller then gathers the finished runs."""
    import subprocess

    rest, skip = [], False
    for a in (sys.argv[1:] if argv is None else list(argv)):  # drop --sets/--jobs/--pretrain-steps
        if skip and not a.startswith("--"):
            continue
        skip = a in ("--sets", "--jobs", "--pretrain-steps", "--pretrain-minutes", "--pretrained")
        if not skip:
            rest.append(a)
    pending, running = list(args.sets), []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            log = open(args.out / f"{name}.log", "w")
            cmd = [sys.executable, __file__, *rest, "--pretrained", str(pretrained), "--sets", name, "--reuse"]
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(2)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            item[2].close()
            print(f"# {item[0]}: process exit {item[1].returncode} (log {args.out / (item[0] + '.log')})", flush=True)


def table(rows) -> str:
    heads = ["set", "train/val/test", "mambadna pretrained MCC", "random init MCC", "CNN (same split) MCC",
             "k-mer LR MCC", "pretrained − CNN", f"≥ CNN + {MARGIN}", "AUROC pre / CNN", "CNNProm published Sn/Sp/CC"]
    out = []
    for r in rows:
        p, c = r["pretrained"]["mcc"], r["cnn"]["mcc"]
        diff = None if p[0] is None or c[0] is None else p[0] - c[0]
        pub = r["published"]
        out.append([r["set"], f"{r['n_train']}/{r['n_val']}/{r['n_test']}", _pm(p), _pm(r["random_init"]["mcc"]),
                    _pm(c), _pm(r["kmer"]["mcc"]), "n/a" if diff is None else f"{diff:+.3f}",
                    "n/a" if diff is None else ("yes" if diff >= MARGIN else "no"),
                    f"{r['pretrained']['auroc'][0]:.3f} / {r['cnn']['auroc'][0]:.3f}",
                    "/".join(f"{v:.2f}" for v in pub) if pub else "n/a"])
    return common.md_table(heads, out)


def figure(rows, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = [("pretrained", "mambadna pretrained"), ("random_init", "mambadna random init"),
              ("cnn", "CNN (same split)"), ("kmer", "k-mer LR")]
    x = np.arange(len(rows))
    w = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.0 + 1.9 * len(rows)), 4.8))
    for k, (key, label) in enumerate(models):
        m = [r[key]["mcc"][0] or 0 for r in rows]
        s = [r[key]["mcc"][1] or 0 for r in rows]
        ax.bar(x + (k - (len(models) - 1) / 2) * w, m, w, yerr=s, capsize=2, label=label)
    pub = [r["published"][2] if r["published"] else np.nan for r in rows]
    ax.scatter(x, pub, marker="_", s=900, color="black", zorder=5, label="CNNProm published (own protocol)")
    ax.set_xticks(x, [r["set"] for r in rows], rotation=15)
    ax.set_ylabel("test MCC (mean ± sd over seeds)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--pretrained", type=Path, default=None, help="pretrained model directory")
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help="pretrain first on every genome of shared/data/genomes (8 x 256 BiMamba, 1024 bp, "
                         "batch 64) for this many steps; the model goes to OUT/pretrained")
    ap.add_argument("--pretrain-minutes", type=float, default=None,
                    help="the same pretraining for this wall-clock budget (pretrain --max-minutes) instead")
    ap.add_argument("--data", type=Path, default=None, help="CNNProm FASTA folder [shared/data/cnnprom_promoters]")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--random-seeds", type=int, default=None,
                    help="seeds of the random-init runs [--seeds]; fewer saves time, the CNN keeps --seeds")
    ap.add_argument("--jobs", type=int, default=1,
                    help="run the sets in this many processes at once (one GPU is far from busy with one "
                         "81-251 bp fine-tuning run), then gather them into one table")
    ap.add_argument("--out", type=Path, default=common.OUT / "cnnprom")
    ap.add_argument("--reuse", action="store_true",
                    help="take runs already finished in --out (metrics.json) instead of running them again: "
                         "split the sets over several calls, then one call with all sets prints the whole table")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="FinetuneConfig field for every run (repeatable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    dev = common.device(args.device)
    args.device = dev.type
    print(common.header(dev, f"seeds {args.seeds}"), flush=True)
    data = args.data or common.data_dir() / "cnnprom_promoters"
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = {}
    for kv in args.overrides:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--set expects KEY=VALUE, got {kv!r}")
        overrides[k.replace("-", "_")] = _value(v)
    if args.quick:
        args.seeds = min(args.seeds, 2)
    pretrained = args.pretrained
    if pretrained is None:
        steps = args.pretrain_steps or (20 if args.quick else None)
        if steps is None and not args.pretrain_minutes:
            ap.error("give --pretrained DIR, --pretrain-steps N or --pretrain-minutes M")
        pretrained = pretrain_genomes(args.out / "pretrained", steps or 0, args.device, args.quick,
                                      minutes=args.pretrain_minutes or 0.0)
    random_dir = args.out / "random_init_model"
    if not (args.reuse and (random_dir / "model.safetensors").is_file()):
        random_init_like(pretrained, random_dir, seed=0)
    if args.jobs > 1 and len(args.sets) > 1:
        run_parallel(args, pretrained, argv)
        args.reuse = True
    rows = []
    for name in args.sets:
        rows.append(run_set(name, data, pretrained, random_dir, args.out, args, overrides))
        r = rows[-1]
        print(f"# {name}: pretrained {_pm(r['pretrained']['mcc'])}, random init {_pm(r['random_init']['mcc'])}, "
              f"CNN {_pm(r['cnn']['mcc'])}, k-mer {_pm(r['kmer']['mcc'])} "
              f"({r['seconds_pretrained']} s + {r['seconds_random']} s)", flush=True)
    md = table(rows)
    cmd = "python benchmarks/evals/cnnprom.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"{common.header(dev, f'seeds {args.seeds}')}\n\nMCC on a stratified held-out 20% test split "
            f"(mean ± sd over {args.seeds} seeds; default `mambadna finetune` recipe; baselines on the same "
            f"split); model {pretrained}\n\n{md}\n\n`{cmd}`\n")
    print("\n" + md)
    (args.out / "cnnprom.md").write_text(text)
    (args.out / "cnnprom.json").write_text(json.dumps(rows, indent=2) + "\n")
    figure(rows, args.out / "cnnprom.png", f"CNNProm sets, {args.seeds} seeds, {common.device_name(dev)}")
    if args.json:
        common.write_json(args.json, rows, dev, seeds=args.seeds, pretrained=str(pretrained))
    print(f"\nwrote {args.out / 'cnnprom.md'}, {args.out / 'cnnprom.json'}, {args.out / 'cnnprom.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
