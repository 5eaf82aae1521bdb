"""`mambadna classify` end to end on the real BRCA1 VCF (subset), sequences, BAM reads, bad input."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mambadna.tokenizer import A, C, G, MASK, T, encode

WINDOW = 64
# record indices of the real VCF: SNVs, a 1-bp deletion (14), an insertion (53),
# two multi-allelic SNVs (309, 578), the <CN0> SV (667) and a 3-bp deletion (668)
SUBSET = list(range(0, 12)) + [14, 53, 309, 578, 667, 668]


@pytest.fixture(scope="module")
def vcf_lines(brca1):
    text = brca1[0].read_text().splitlines()
    header = [l for l in text if l.startswith("#")]
    body = [l for l in text if l and not l.startswith("#")]
    return header, body


def write_vcf(path: Path, header, body) -> Path:
    path.write_text("\n".join(list(header) + list(body)) + "\n")
    return path


@pytest.fixture(scope="module")
def subset_vcf(tmp_path_factory, vcf_lines):
    header, body = vcf_lines
    return write_vcf(tmp_path_factory.mktemp("vcf") / "subset.vcf", header, [body[i] for i in SUBSET])


@pytest.fixture(scope="module")
def ref_seq(brca1):
    lines = brca1[1].read_text().splitlines()
    return "".join(l.strip() for l in lines[1:]).upper()


def _window(ref_seq, pos):
    s = pos - 1 - WINDOW // 2
    assert s >= 0
    return ref_seq[s:s + WINDOW]


def _expected_alleles(vcf):
    import pysam

    n = 0
    for r in pysam.VariantFile(str(vcf)):
        n += sum(1 for a in r.alts if not a.startswith("<") and a != "*")
    return n


def test_vcf_zero_shot_mlm_end_to_end(tiny_model_dir, brca1, subset_vcf, ref_seq, tmp_path, capsys, caplog, run_cli):
    import pysam

    out, vout = tmp_path / "scores.tsv", tmp_path / "scored.vcf.gz"
    with caplog.at_level(logging.INFO, logger="mambadna"):
        code, so, se = run_cli(["classify", "--model", tiny_model_dir, "--vcf", subset_vcf, "--reference", brca1[1],
                                "--out", out, "--vcf-out", vout, "--window", WINDOW, "--batch-size", 5,
                                "--no-progress"])
    assert code == 0, se
    df = pd.read_csv(out, sep="\t", dtype={"id": str})
    n_exp = _expected_alleles(subset_vcf)
    assert len(df) == n_exp == len(SUBSET) - 1 + 2  # SV skipped, two records with 2 ALTs
    assert list(df.columns) == ["contig", "pos", "id", "ref", "alt", "allele", "kind", "llr", "cosine_distance"]
    assert set(df["kind"]) == {"SNV", "DEL", "INS"}
    assert df["llr"].notna().all() and (df["cosine_distance"] >= -1e-6).all()
    summary = [r.getMessage() for r in caplog.records if "skipped alleles" in r.getMessage()]
    assert len(summary) == 1 and "symbolic: 1" in summary[0]

    # LLR of the first SNV against an independent computation: mask the variant
    # position in the reference window, log P(alt) - log P(ref) over A,C,G,T
    from mambadna.components.checkpoint import load_model

    row = df.iloc[0]
    assert row["kind"] == "SNV"
    win = _window(ref_seq, int(row["pos"]))
    assert win[WINDOW // 2] == row["ref"]
    ids = torch.as_tensor(encode(win).astype(np.int64))[None]
    ids[0, WINDOW // 2] = MASK
    model = load_model(tiny_model_dir).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(ids)[0, WINDOW // 2, [A, C, G, T]], -1)
    col = {"A": 0, "C": 1, "G": 2, "T": 3}
    manual = float(lp[col[row["alt"]]] - lp[col[row["ref"]]])
    assert row["llr"] == pytest.approx(manual, rel=1e-4, abs=1e-5)

    # annotated VCF: readable, INFO declared, tabix index, one value per ALT
    assert Path(str(vout) + ".tbi").is_file()
    vf = pysam.VariantFile(str(vout))
    for key in ("MAMBADNA_LLR", "MAMBADNA_COSDIST"):
        assert key in vf.header.info and vf.header.info[key].number == "A"
    recs = list(vf.fetch("ref_brca1", 0, 100000))
    assert len(recs) == len(SUBSET)
    first = recs[0]
    assert first.info["MAMBADNA_LLR"][0] == pytest.approx(row["llr"], abs=1e-4)
    multi = [r for r in recs if len(r.alts) == 2]
    assert len(multi) == 2 and all(len(r.info["MAMBADNA_LLR"]) == 2 for r in multi)
    sv = [r for r in recs if r.alts[0].startswith("<")]
    assert len(sv) == 1 and "MAMBADNA_LLR" not in sv[0].info
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_vcf_causal_llr_and_max_records(tiny_causal_model_dir, brca1, subset_vcf, ref_seq, tmp_path):
    from mambadna.components.checkpoint import load_model
    from mambadna.tasks.classify import ClassifyConfig, classify

    out = tmp_path / "c.tsv"
    s = classify(ClassifyConfig(model=str(tiny_causal_model_dir), out=str(out), vcf=str(subset_vcf),
                                reference=str(brca1[1]), window=WINDOW, max_records=3, progress=False))
    df = pd.read_csv(out, sep="\t")
    assert len(df) == 3 and s["rows"] == 3
    row = df.iloc[1]
    win = _window(ref_seq, int(row["pos"]))
    alt = win[:WINDOW // 2] + row["alt"] + win[WINDOW // 2 + 1:]
    model = load_model(tiny_causal_model_dir).eval()

    def ll(seq):
        ids = torch.as_tensor(encode(seq).astype(np.int64))[None]
        with torch.no_grad():
            lp = torch.log_softmax(model(ids)[0, :-1][:, [A, C, G, T]], -1)
        tgt = torch.as_tensor([{"A": 0, "C": 1, "G": 2, "T": 3}[c] for c in seq[1:]])
        return float(lp[torch.arange(len(tgt)), tgt].sum())

    assert row["llr"] == pytest.approx(ll(alt) - ll(win), rel=1e-4, abs=1e-4)


@pytest.fixture(scope="module")
def classifier_dir(tiny_model_dir, tmp_path_factory):
    from mambadna.components.checkpoint import load_model
    from mambadna.model.heads import HeadConfig, SequenceClassifier, save_classifier

    torch.manual_seed(3)
    clf = SequenceClassifier(load_model(tiny_model_dir), HeadConfig(classes=["benign", "damaging"], hidden=[8]))
    d = tmp_path_factory.mktemp("clf")
    save_classifier(clf, d)
    return d


def test_vcf_with_classifier(classifier_dir, brca1, subset_vcf, ref_seq, tmp_path, capsys, run_cli):
    from mambadna.model.heads import load_classifier

    out, vout = tmp_path / "s.tsv", tmp_path / "s.vcf.gz"
    code, _, se = run_cli(["classify", "--model", classifier_dir, "--vcf", subset_vcf, "--reference", brca1[1],
                           "--out", out, "--vcf-out", vout, "--window", WINDOW, "--max-records", 6,
                           "--no-progress"])
    assert code == 0, se
    df = pd.read_csv(out, sep="\t")
    assert "llr" not in df.columns and {"p_ref", "p_alt", "diff"} <= set(df.columns)
    np.testing.assert_allclose(df["diff"], df["p_alt"] - df["p_ref"], atol=2e-6)
    clf = load_classifier(classifier_dir)
    row = df.iloc[0]
    win = _window(ref_seq, int(row["pos"]))
    p = clf.predict_batch(torch.as_tensor(encode(win).astype(np.int64))[None])[0, 1].item()
    assert row["p_ref"] == pytest.approx(p, rel=1e-4)
    import pysam

    vf = pysam.VariantFile(str(vout))
    assert {"MAMBADNA_PREF", "MAMBADNA_PALT", "MAMBADNA_DIFF"} <= set(vf.header.info)
    assert len(list(vf)) == 6


def test_sequences_fasta_bed_bam(classifier_dir, tiny_model_dir, brca1, shared_data, tmp_path, capsys, run_cli):
    fa = tmp_path / "s.fa"
    fa.write_text(">a\nACGTACGTAC\n>b\nacgtnnACGTAAAC\n>c\nGGGGCCCCAA\n")
    out = tmp_path / "fa.tsv"
    code, _, se = run_cli(["classify", "--model", classifier_dir, "--fasta", fa, "--out", out, "--no-progress"])
    assert code == 0, se
    df = pd.read_csv(out, sep="\t")
    assert list(df["name"]) == ["a", "b", "c"] and list(df["length"]) == [10, 14, 10]
    np.testing.assert_allclose(df["p_benign"] + df["p_damaging"], 1.0, atol=1e-5)

    bed = tmp_path / "r.bed"
    bed.write_text("ref_brca1\t100\t140\tr1\t0\t+\nref_brca1\t200\t260\tr2\t0\t-\nref_brca1\t300\t330\n")
    out = tmp_path / "bed.tsv"
    code, _, se = run_cli(["classify", "--model", tiny_model_dir, "--bed", bed, "--reference", brca1[1],
                           "--out", out, "--no-progress"])
    assert code == 0, se
    df = pd.read_csv(out, sep="\t")
    # the one input adapter names an unnamed interval by its 1-based region and strand, as embed does
    assert list(df["name"]) == ["r1", "r2", "ref_brca1:301-330(+)"]
    import mambadna

    _, idx = mambadna.load(tiny_model_dir).embed(bed=bed, genome=brca1[1], return_index=True, progress=False)
    assert list(idx["name"]) == list(df["name"])
    assert list(df["length"]) == [40, 60, 30] and np.isfinite(df["loglik_per_base"]).all()
    assert (df["loglik_per_base"] < 0).all()

    import pysam

    bam = shared_data / "alignments" / "ex1" / "ex1.bam"
    region = "chr1:100-130"
    with pysam.AlignmentFile(str(bam)) as af:
        n_exp = sum(1 for r in af.fetch("chr1", 99, 130)
                    if not (r.is_unmapped or r.is_secondary or r.is_supplementary or r.is_duplicate
                            or r.is_qcfail) and r.query_sequence)
    out = tmp_path / "bam.tsv"
    code, _, se = run_cli(["classify", "--model", classifier_dir, "--bam", bam, "--region", region,
                           "--out", out, "--no-progress"])
    assert code == 0, se
    df = pd.read_csv(out, sep="\t")
    assert len(df) == n_exp > 0 and set(df["contig"]) == {"chr1"}


def _assert_clean_failure(code, err, tmp_path, outs, *needles):
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert str(n) in lines[0], lines[0]
    for o in outs:
        assert not Path(o).exists() and not Path(str(o) + ".tbi").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], list(tmp_path.iterdir())


def test_bad_vcf_inputs(tiny_model_dir, brca1, vcf_lines, tmp_path, capsys, run_cli):
    header, body = vcf_lines
    out, vout = tmp_path / "o.tsv", tmp_path / "o.vcf.gz"
    base = ["classify", "--model", tiny_model_dir, "--reference", brca1[1], "--out", out, "--vcf-out", vout,
            "--window", WINDOW, "--no-progress", "--batch-size", 2]

    def run(vcf, *extra):
        return run_cli(base + ["--vcf", vcf, *extra])

    # contig absent from the FASTA (after a few good records: no partial output)
    bad = body[:3] + ["chrZZ" + body[3][len("ref_brca1"):]]
    code, _, err = run(write_vcf(tmp_path / "contig.vcf", header, bad))
    _assert_clean_failure(code, err, tmp_path, [out, vout], "contig.vcf", "chrZZ", "not in the reference")

    # REF mismatch: error names the record; --skip-ref-mismatch skips and counts it
    f = body[4].split("\t")
    true_ref = f[3]
    f[3] = {"A": "C", "C": "G", "G": "T", "T": "A"}[true_ref]
    f[4] = true_ref
    mm = write_vcf(tmp_path / "mismatch.vcf", header, body[:4] + ["\t".join(f)] + body[5:7])
    code, _, err = run(mm)
    _assert_clean_failure(code, err, tmp_path, [out, vout], "mismatch.vcf", f"ref_brca1:{f[1]}", "REF")
    code, _, err = run(mm, "--skip-ref-mismatch")
    assert code == 0, err
    assert len(pd.read_csv(out, sep="\t")) == 6
    out.unlink()
    vout.unlink()
    Path(str(vout) + ".tbi").unlink()

    # malformed line
    g = body[2].split("\t")
    g[1] = "12x"
    code, _, err = run(write_vcf(tmp_path / "malformed.vcf", header, body[:2] + ["\t".join(g)]))
    _assert_clean_failure(code, err, tmp_path, [out, vout], "malformed.vcf", "malformed")

    # empty file, and a header without records
    (tmp_path / "empty.vcf").write_text("")
    code, _, err = run(tmp_path / "empty.vcf")
    _assert_clean_failure(code, err, tmp_path, [out, vout], "empty.vcf", "empty")
    code, _, err = run(write_vcf(tmp_path / "norec.vcf", header, []))
    _assert_clean_failure(code, err, tmp_path, [out, vout], "norec.vcf", "no variant records")

    # model directory without weights
    nomodel = tmp_path / "nomodel"
    nomodel.mkdir()
    (nomodel / "config.json").write_text((Path(tiny_model_dir) / "config.json").read_text())
    code, _, err = run_cli(["classify", "--model", nomodel, "--vcf", brca1[0], "--reference", brca1[1],
                            "--out", out])
    _assert_clean_failure(code, err, tmp_path, [out], "nomodel", "model.safetensors")


def test_bad_sequence_inputs(tiny_model_dir, brca1, tmp_path, capsys, run_cli):
    out = tmp_path / "o.tsv"
    bed = tmp_path / "beyond.bed"
    bed.write_text("ref_brca1\t100\t140\nref_brca1\t81000\t81300\n")
    code, _, err = run_cli(["classify", "--model", tiny_model_dir, "--bed", bed, "--reference", brca1[1],
                            "--out", out])
    _assert_clean_failure(code, err, tmp_path, [out], "beyond.bed", "line 2", "beyond the end")
    fa = tmp_path / "bad.fa"
    fa.write_text(">ok\nACGT\n>bad\nACGT-ACGT\n")
    code, _, err = run_cli(["classify", "--model", tiny_model_dir, "--fasta", fa, "--out", out])
    _assert_clean_failure(code, err, tmp_path, [out], "bad.fa", "bad", "'-'")
