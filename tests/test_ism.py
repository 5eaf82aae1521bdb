"""`mambadna ism`: scores equal `classify`'s for the same SNVs and windows (zero-shot,
RC-averaged, Δ probability), the bigWig and logo outputs, and bad input."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GENOME = REPO / "data" / "example_genome.fa"
WINDOW = 64
REGION = ("chrA", 1000, 1010)  # 1-based inclusive: 11 positions


def _vcf(path: Path, sites) -> Path:
    """A VCF of SNVs: (pos, ref, [alts]) on chrA (one record each)."""
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=chrA,length=160000>",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    lines += [f"chrA\t{p}\t.\t{r}\t{','.join(a)}\t.\t.\t." for p, r, a in sites]
    path.write_text("\n".join(lines) + "\n")
    return path


def _read_ism(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", comment="#")


def _classify_vs_ism(run_cli, model, tmp_path, ism_df, extra, score_col):
    """classify the SNVs of a few ISM positions (single- and multi-ALT records)
    and compare with the ISM rows."""
    picks = ism_df.drop_duplicates("pos").iloc[[0, 4, 10]]
    sites = []
    for k, (_, r) in enumerate(picks.iterrows()):
        alts = list(ism_df.loc[ism_df["pos"] == r["pos"], "alt"])
        sites.append((int(r["pos"]), r["ref"], alts if k != 1 else alts[1:2]))
    vcf = _vcf(tmp_path / "snv.vcf", sites)
    out = tmp_path / "classify.tsv"
    code, _, err = run_cli(["classify", "--model", model, "--vcf", vcf, "--reference", GENOME, "--out", out,
                            "--window", WINDOW, "--no-progress"] + extra)
    assert code == 0, err
    c = pd.read_csv(out, sep="\t")
    assert len(c) == 7
    m = c.merge(ism_df, on=["contig", "pos", "ref", "alt"], how="left")
    assert m["score"].notna().all()
    np.testing.assert_allclose(m["score"], m[score_col], atol=1e-4, rtol=0)


def test_ism_equals_classify_llr_bigwig_logo(tiny_model_dir, run_cli, tmp_path):
    import pyBigWig

    out, bw, png = tmp_path / "ism.tsv", tmp_path / "ism.bw", tmp_path / "ism.png"
    code, _, err = run_cli(["ism", "--model", tiny_model_dir, "--reference", GENOME,
                            "--region", f"{REGION[0]}:{REGION[1]}-{REGION[2]}", "--out", out, "--bigwig", bw,
                            "--logo", png, "--window", WINDOW, "--no-progress"])
    assert code == 0, err
    head = out.read_text().splitlines()[:4]
    assert head[0].startswith("# mambadna ism") and "mean_llr" in "\n".join(head)
    assert head[3] == "contig\tpos\tref\talt\tscore"
    df = _read_ism(out)
    n = REGION[2] - REGION[1] + 1
    assert len(df) == 3 * n and list(df["pos"].unique()) == list(range(REGION[1], REGION[2] + 1))
    assert (df["ref"] != df["alt"]).all() and df.groupby("pos")["alt"].nunique().eq(3).all()

    _classify_vs_ism(run_cli, tiny_model_dir, tmp_path, df, ["--scores", "llr"], "llr")

    # bigWig: the per-position mean LLR, one base per entry
    f = pyBigWig.open(str(bw))
    assert f.isBigWig() and f.chroms()["chrA"] == 160000
    vals = np.asarray(f.values("chrA", REGION[1] - 1, REGION[2]))
    f.close()
    np.testing.assert_allclose(vals, df.groupby("pos")["score"].mean().to_numpy(), atol=1e-5)
    assert png.stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # the Python API gives the same numbers
    from mambadna.inference.ism import ism_matrix, saturation_mutagenesis

    sites = list(saturation_mutagenesis(str(tiny_model_dir), str(GENOME), f"chrA:{REGION[1]}-{REGION[1] + 2}",
                                        window=WINDOW, device="cpu"))
    m, ref = ism_matrix(sites, REGION[1] - 1, REGION[1] + 2)
    assert m.shape == (3, 4) and len(ref) == 3
    first = df[df["pos"] == REGION[1]].set_index("alt")["score"]
    for a, v in zip(sites[0].alts, sites[0].scores):
        assert v == pytest.approx(first[a], abs=1e-4)


def test_ism_rc_average_equals_classify(tiny_model_dir, run_cli, tmp_path):
    out = tmp_path / "ism.tsv"
    code, _, err = run_cli(["ism", "--model", tiny_model_dir, "--reference", GENOME, "--region",
                            f"chrA:{REGION[1]}-{REGION[2]}", "--out", out, "--window", WINDOW, "--rc-average",
                            "--no-progress"])
    assert code == 0, err
    df = _read_ism(out)
    assert "averaged over both strands" in out.read_text().splitlines()[1]
    _classify_vs_ism(run_cli, tiny_model_dir, tmp_path, df, ["--scores", "llr", "--rc-average"], "llr")


def test_ism_causal_equals_classify(tiny_causal_model_dir, run_cli, tmp_path):
    out = tmp_path / "ism.tsv"
    code, _, err = run_cli(["ism", "--model", tiny_causal_model_dir, "--reference", GENOME, "--region",
                            f"chrA:{REGION[1]}-{REGION[2]}", "--out", out, "--window", WINDOW, "--batch-size", 4,
                            "--no-progress"])
    assert code == 0, err
    assert "next-token" in out.read_text().splitlines()[1]
    _classify_vs_ism(run_cli, tiny_causal_model_dir, tmp_path, _read_ism(out), ["--scores", "llr"], "llr")


@pytest.fixture(scope="module")
def head_dir(tiny_model_dir, tmp_path_factory):
    from mambadna.components.checkpoint import load_model
    from mambadna.model.heads import HeadConfig, SequenceClassifier, save_classifier

    torch.manual_seed(5)
    clf = SequenceClassifier(load_model(tiny_model_dir), HeadConfig(classes=["neg", "pos"], hidden=[8]))
    with torch.no_grad():  # a head with visible effects
        for p in clf.head.parameters():
            p.mul_(10)
    d = tmp_path_factory.mktemp("ism_head")
    save_classifier(clf, d)
    return d


def test_ism_delta_probability_equals_classify(head_dir, run_cli, tmp_path):
    out = tmp_path / "ism.tsv"
    code, _, err = run_cli(["ism", "--model", head_dir, "--reference", GENOME, "--region",
                            f"chrA:{REGION[1]}-{REGION[2]}", "--out", out, "--window", WINDOW, "--no-progress"])
    assert code == 0, err
    assert "P_alt(pos) - P_ref(pos)" in out.read_text().splitlines()[1]
    df = _read_ism(out)
    assert df["score"].abs().max() > 0
    _classify_vs_ism(run_cli, head_dir, tmp_path, df, ["--scores", "classifier"], "diff")


@pytest.fixture(scope="module")
def n_genome(tmp_path_factory):
    """chr1: 300 bases then 100 N then 100 bases."""
    rng = np.random.default_rng(0)
    acgt = lambda n: "".join(rng.choice(list("ACGT"), n))  # noqa: E731
    seq = acgt(300) + "N" * 100 + acgt(100)
    p = tmp_path_factory.mktemp("ngenome") / "g.fa"
    p.write_text(">chr1\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")
    return p


@pytest.mark.parametrize("case", ["beyond_end", "only_n", "no_head", "unwritable", "out_is_dir", "logo_too_long",
                                  "bed_beyond_end"])
def test_ism_bad_input(case, tiny_model_dir, n_genome, run_cli, tmp_path):
    outdir = tmp_path / "o"
    outdir.mkdir()
    out = outdir / "ism.tsv"
    args = ["ism", "--model", tiny_model_dir, "--reference", n_genome, "--window", WINDOW, "--no-progress",
            "--bigwig", outdir / "t.bw", "--logo", outdir / "t.png"]
    region = "chr1:10-20"
    if case == "beyond_end":
        region = "chr1:490-510"
    elif case == "only_n":
        region = "chr1:320-380"
    elif case == "no_head":
        args += ["--scores", "classifier"]
    elif case == "unwritable":
        (outdir / "afile").write_text("x")
        out = outdir / "afile" / "ism.tsv"
    elif case == "out_is_dir":
        out = outdir / "adir"
        out.mkdir()
    elif case == "logo_too_long":
        region = "chr1:1-2500"
        n_genome_long = tmp_path / "long.fa"
        n_genome_long.write_text(">chr1\n" + "ACGT" * 1000 + "\n")
        args[args.index(n_genome)] = n_genome_long
    if case == "bed_beyond_end":
        bed = tmp_path / "r.bed"
        bed.write_text("chr1\t10\t20\nchr1\t480\t520\n")
        args += ["--bed", bed]
    else:
        args += ["--region", region]
    before = sorted(p.name for p in outdir.iterdir())
    code, _, err = run_cli(args + ["--out", out])
    assert code == 2, (case, err)
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    expect = {"beyond_end": "beyond the end", "only_n": "only N", "no_head": "head",
              "unwritable": "not a folder", "out_is_dir": "folder", "logo_too_long": "at most",
              "bed_beyond_end": "beyond the end"}[case]
    assert expect in lines[0], lines[0]
    assert sorted(p.name for p in outdir.iterdir()) == before  # nothing written, no temporary left


@pytest.mark.parametrize("window", [1, 8, 33, 64])
@pytest.mark.parametrize("chunk", [5, 4096])
def test_ism_windows_equal_window_maker(window, chunk, tmp_path, monkeypatch):
    """The vectorised ISM windows (one fetch and tokenising per chunk) are field for field
    ``_WindowMaker.make``'s for each SNV: at both contig ends (N padding), around N and IUPAC
    bases (skipped and counted), across chunk boundaries and regions."""
    from mambadna.inference import ism
    from mambadna.io.fasta import Genome
    from mambadna.io.vcf import VariantStats, _WindowMaker

    rng = np.random.default_rng(1)
    acgt = lambda n: "".join(rng.choice(list("ACGT"), n))  # noqa: E731
    seq = acgt(40) + acgt(20).lower() + "NNN" + acgt(7) + "R" + acgt(79)  # 150 bases
    (tmp_path / "g.fa").write_text(">chr1\n" + "\n".join(seq[i:i + 50] for i in range(0, 150, 50))
                                   + "\n>chr2\n" + acgt(30) + "\n")
    g = Genome(str(tmp_path / "g.fa"))
    monkeypatch.setattr(ism, "ISM_CHUNK", chunk)
    regions = ism.resolve_regions(g, ["chr1:1-25", "chr1:50-80", "chr1:130-150", "chr2"])
    counter = {"skipped": 0}
    got = list(ism._sites(g, regions, window, counter))

    maker = _WindowMaker(g.path, g, window, False, VariantStats())
    want, skipped, k = [], 0, 0
    for c, s, e in regions:
        for p0 in range(s, e):
            b = g.fetch(c, p0, p0 + 1)
            if b not in "ACGT":
                skipped += 1
                continue
            alts = tuple(x for x in "ACGT" if x != b)
            want.append(((c, p0 + 1, b, alts), list(maker.make(c, p0 + 1, None, b, alts, k, f"{c}:{p0 + 1}"))))
            k += 1
    assert counter["skipped"] == skipped == 4
    assert len(got) == len(want) == 25 + 31 - 4 + 21 + 30
    for (gk, gw), (wk, ww) in zip(got, want):
        assert gk == wk and len(gw) == len(ww) == 3
        assert all(w.ref_ids is gw[0].ref_ids for w in gw)  # one reference window per site
        for x, y in zip(gw, ww):
            for f in ("contig", "pos", "id", "ref", "alt", "allele_index", "record_index", "var_start",
                      "ref_len", "alt_len", "kind"):
                assert getattr(x, f) == getattr(y, f), f
            for f in ("ref_ids", "alt_ids"):
                a, b = getattr(x, f), getattr(y, f)
                assert a.dtype == b.dtype and a.shape == b.shape == (window,) and np.array_equal(a, b), f


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scoring_group_does_not_synchronise(tiny_model_dir):
    """A scoring group (masked forward, LLRs of SNVs and of an indel) is queued on the
    device without waiting for it: the host prepares the next group meanwhile."""
    from mambadna.components.checkpoint import load_model
    from mambadna.inference.ism import _sites, resolve_regions
    from mambadna.inference.scoring import Scorer, VariantScorer, _Site
    from mambadna.io.fasta import Genome

    dev = torch.device("cuda")
    genome = Genome(GENOME)
    sites = [_Site(ws) for _, ws in _sites(genome, resolve_regions(genome, [("chrA", 999, 1010)]), WINDOW,
                                            {"skipped": 0})]
    w = sites[0].windows[0]  # one allele made an insertion (its own masked forward)
    sites[0].windows[0] = dataclasses.replace(w, alt_len=2, kind="INS", alt_ids=np.concatenate(
        [w.alt_ids[:w.var_start + 1], w.alt_ids[w.var_start:-1]]))
    for rc in (False, True):
        vs = VariantScorer(Scorer(load_model(tiny_model_dir, dev), None, dev), ("llr",), rc_llr=rc)
        vs._score_group(sites)  # first call: constants reach the device, kernels compile
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = vs._score_group(sites)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert out.shape == (3 * len(sites), 1) and torch.isfinite(out).all()
