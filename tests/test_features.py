"""Per-base labels from GFF3 / GenBank / BED feature tables (io/features.py)."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from mambadna.errors import InputError
from mambadna.io.features import load_token_labels, token_windows

ECOLI_FA = "genomes/GCF_000005845.2_ASM584v2_genomic.fna.gz"
ECOLI_GFF = "genomes/GCF_000005845.2_ASM584v2_genomic.gff.gz"


def write_toy_annotation(d, n_windows=40, window=128, seed=0):
    """A toy genome (one contig ``chrT``) whose CDS features are GC-rich codon
    runs in AT-rich background, as FASTA + GFF3 + BED. Returns (fasta, gff, bed, cds 0-based spans)."""
    rng = np.random.default_rng(seed)
    codons = ["GCC", "GCG", "GAA", "CTG", "CGC"]
    seq, spans = [], []
    pos = 0
    L = n_windows * window
    while pos < L:
        if rng.random() < 0.5:
            n = int(rng.integers(20, 60)) * 3
            s = "".join(rng.choice(codons, n // 3))
            spans.append((pos, min(L, pos + n)))
        else:
            n = int(rng.integers(40, 200))
            s = "".join(rng.choice(list("AATTACGT"), n))
        seq.append(s)
        pos += n
    genome = "".join(seq)[:L]
    spans = [(a, b) for a, b in spans if a < L]
    fa = d / "toy.fa"
    fa.write_text(">chrT\n" + "\n".join(genome[i:i + 80] for i in range(0, L, 80)) + "\n")
    gff = d / "toy.gff3"
    rows = ["##gff-version 3", f"##sequence-region chrT 1 {L}"]
    for k, (a, b) in enumerate(spans):
        rows.append(f"chrT\ttoy\tgene\t{a + 1}\t{b}\t.\t+\t.\tID=gene{k}")
        rows.append(f"chrT\ttoy\tCDS\t{a + 1}\t{b}\t.\t+\t0\tID=cds{k};Parent=gene{k}")
    gff.write_text("\n".join(rows) + "\n")
    bed = d / "toy.bed"
    bed.write_text("".join(f"chrT\t{a}\t{b}\tCDS\n" for a, b in spans))
    return fa, gff, bed, spans


def test_gff_genbank_and_bed_give_the_same_labels(tmp_path):
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqRecord import SeqRecord

    fa, gff, bed, spans = write_toy_annotation(tmp_path)
    want = np.zeros(40 * 128, dtype=np.uint8)
    for a, b in spans:
        want[a:b] = 1
    t = load_token_labels(gff, fa)
    assert t.classes == ["other", "CDS"] and t.counts == {"CDS": len(spans)}
    np.testing.assert_array_equal(t.labels["chrT"], want)
    assert load_token_labels(bed, fa).labels["chrT"].tolist() == want.tolist()
    # GenBank (Biopython), self-contained: the sequence comes from the file; a joined CDS labels both parts
    seq = "".join(l.strip() for l in fa.read_text().splitlines()[1:])
    rec = SeqRecord(Seq(seq), id="chrT", name="chrT", annotations={"molecule_type": "DNA"})
    rec.features = [SeqFeature(FeatureLocation(a, b, strand=1), type="CDS") for a, b in spans]
    rec.features.append(SeqFeature(FeatureLocation(0, 50, strand=1), type="gene"))
    gb = tmp_path / "toy.gbk"
    SeqIO.write([rec], gb, "genbank")
    g = load_token_labels(gb)
    np.testing.assert_array_equal(g.labels["chrT"], want)
    assert g.fetch_ids("chrT", 0, 10).tolist() == t.fetch_ids("chrT", 0, 10).tolist()
    # two classes: the type listed first wins where they overlap
    two = load_token_labels(gff, fa, ["gene", "CDS"])
    assert two.classes == ["other", "gene", "CDS"] and set(np.unique(two.labels["chrT"])) == {0, 1}
    names, ids, labs = token_windows(t, 128)
    assert len(names) == 40 and names[1] == "chrT:128-256" and all(len(x) == 128 for x in ids)
    np.testing.assert_array_equal(np.concatenate(labs), want)


def test_real_ecoli_cds_labels(shared_data):
    t = load_token_labels(shared_data / ECOLI_GFF, shared_data / ECOLI_FA)
    lab = t.labels["NC_000913.3"]
    assert t.counts["CDS"] == 4337 and len(lab) == 4641652
    assert 0.85 < lab.mean() < 0.88  # E. coli is ~86% coding
    assert lab[189:255].all() and not lab[:189].any()  # thrL: CDS 190..255 (1-based)


def test_feature_errors(tmp_path, shared_data):
    fa, gff, bed, _ = write_toy_annotation(tmp_path, n_windows=4)
    other = tmp_path / "other.gff3"
    other.write_text("##gff-version 3\nchrZ\ttoy\tCDS\t1\t30\t.\t+\t0\tID=x\n")
    with pytest.raises(InputError) as e:
        load_token_labels(other, fa)
    assert str(e.value).startswith(str(other)) and "line 2" in str(e.value) and "'chrZ'" in str(e.value) \
        and "not in the reference" in str(e.value)
    beyond = tmp_path / "beyond.gff3.gz"
    with gzip.open(beyond, "wt") as fh:
        fh.write("##gff-version 3\nchrT\ttoy\tCDS\t1\t30\t.\t+\t0\tID=a\nchrT\ttoy\tCDS\t500\t600\t.\t-\t0\tID=b\n")
    with pytest.raises(InputError) as e:
        load_token_labels(beyond, fa)
    assert str(e.value).startswith(str(beyond)) and "line 3" in str(e.value) and "beyond the end" in str(e.value) \
        and "512 bp" in str(e.value)
    with pytest.raises(InputError, match="no features of type tRNA; the file has: gene"):
        load_token_labels(gff, fa, ["tRNA"])
    with pytest.raises(InputError, match="need the reference"):
        load_token_labels(gff)
    bad = tmp_path / "bad.gff"
    bad.write_text("##gff-version 3\nchrT\ttoy\tCDS\t1\n")
    with pytest.raises(InputError, match="line 2: a GFF3 feature line has 9"):
        load_token_labels(bad, fa)
    weird = tmp_path / "x.txt"
    weird.write_text("hello\n")
    with pytest.raises(InputError, match="unknown feature file format"):
        load_token_labels(weird, fa)
    gbad = tmp_path / "b.bed"
    gbad.write_text("chrT\t0\t10\tCDS\nchrT\t500\t520\tCDS\n")
    with pytest.raises(InputError) as e:
        load_token_labels(gbad, fa)
    assert str(e.value).startswith(str(gbad)) and "line 2" in str(e.value)
