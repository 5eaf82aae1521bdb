"""Variant windows on the real BRCA1 VCF + reference, the headerless worm list, and bad inputs."""
from __future__ import annotations

import logging
import types

import numpy as np
import pysam
import pytest

from mambadna.errors import InputError
from mambadna.io.fasta import Genome
from mambadna.tokenizer import decode, encode
from mambadna.io.vcf import VariantStats, classify_allele, iter_variant_windows

HDR = ("##fileformat=VCFv4.2\n##contig=<ID=chr1>\n##contig=<ID=chr2>\n"
       "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")


@pytest.fixture(scope="module")
def brca1(shared_data):
    d = shared_data / "variants_brca1"
    return d / "brca1_1kgPhase3_variants.vcf", Genome(d / "ref_brca1.fa")


@pytest.fixture
def tiny(tmp_path):
    """FASTA with contigs named without 'chr': 1 = ACGT repeated, 2 = 40 bp."""
    fa = tmp_path / "tiny.fa"
    fa.write_text(">1\n" + "ACGTACGTAC" * 10 + "\n>2\n" + "TTTTGGGGCCCCAAAATTTTGGGGCCCCAAAATTTTGGGG\n")
    return Genome(fa)


def _vcf(tmp_path, body, name="v.vcf"):
    p = tmp_path / name
    p.write_text(HDR + body)
    return p


def test_brca1_all_records(brca1, caplog):
    vcf, g = brca1
    st = VariantStats()
    it = iter_variant_windows(vcf, g, window=128, stats=st)
    assert isinstance(it, types.GeneratorType)
    ws = list(it)
    assert st.records == 2052 and st.windows == len(ws) == 2057
    assert dict(st.skipped) == {"symbolic": 1}  # the one SV (<CN0>)
    assert all(w.ref_ids.shape == (128,) and w.alt_ids.shape == (128,) and w.ref_ids.dtype == np.uint8 for w in ws)
    kinds = {k: sum(w.kind == k for w in ws) for k in ("SNV", "MNV", "INS", "DEL", "COMPLEX")}
    assert kinds["SNV"] > 1900 and kinds["INS"] > 0 and kinds["DEL"] > 0
    with caplog.at_level(logging.INFO, logger="mambadna"):
        st.log_summary()
    recs = [r for r in caplog.records if r.name == "mambadna"]
    assert len(recs) == 1 and "symbolic: 1" in recs[0].getMessage() and "2057 windows" in recs[0].getMessage()


def test_known_snv_windows(brca1):
    vcf, g = brca1
    w = next(iter_variant_windows(vcf, g, window=64))
    assert (w.contig, w.pos, w.id, w.ref, w.alt, w.kind) == ("ref_brca1", 51, "rs8176320", "C", "T", "SNV")
    assert w.var_start == 32 and w.allele_index == 1 and w.record_index == 0
    np.testing.assert_array_equal(w.ref_ids, g.fetch_ids("ref_brca1", 50 - 32, 50 + 32))
    assert decode(w.ref_ids[32:33]) == "C" and decode(w.alt_ids[32:33]) == "T"
    diff = np.flatnonzero(w.ref_ids != w.alt_ids)
    assert diff.tolist() == [32]
    # near the contig start the window is padded with N
    w2 = next(iter_variant_windows(vcf, g, window=256))
    assert decode(w2.ref_ids[:78]) == "N" * 78 and "N" not in decode(w2.ref_ids[78:])


def test_indels_and_multiallelic(brca1):
    vcf, g = brca1
    W, c = 64, 32
    ws = list(iter_variant_windows(vcf, g, window=W))
    dele = next(w for w in ws if w.pos == 509)  # CT -> C
    assert (dele.ref, dele.alt, dele.kind) == ("CT", "C", "DEL")
    s0 = 508
    assert decode(dele.alt_ids) == g.fetch("ref_brca1", s0 - c, s0 + 1) + g.fetch("ref_brca1", s0 + 2, s0 + 2 + W - c - 1)
    ins = next(w for w in ws if w.kind == "INS")
    s0 = ins.pos - 1
    want = g.fetch("ref_brca1", s0 - c, s0) + ins.alt + g.fetch("ref_brca1", s0 + len(ins.ref), s0 + W)
    assert decode(ins.alt_ids) == want[:W]
    multi = [w for w in ws if w.pos == 51292]
    assert [(w.alt, w.allele_index, w.kind) for w in multi] == [("CAAAC", 1, "SNV"), ("A", 2, "DEL")]
    assert multi[0].record_index == multi[1].record_index
    np.testing.assert_array_equal(multi[0].ref_ids, multi[1].ref_ids)


def test_bgzip_and_bcf_give_same_windows(brca1, tmp_path):
    vcf, g = brca1
    gz = tmp_path / "v.vcf.gz"
    pysam.tabix_compress(str(vcf), str(gz))
    bcf = tmp_path / "v.bcf"
    with pysam.VariantFile(str(vcf)) as src, pysam.VariantFile(str(bcf), "wb", header=src.header) as out:
        for rec in src:
            out.write(rec)
    ref = [(w.pos, w.alt, bytes(w.alt_ids)) for w in iter_variant_windows(vcf, g, window=32)]
    assert [(w.pos, w.alt, bytes(w.alt_ids)) for w in iter_variant_windows(gz, g, window=32)] == ref
    assert [(w.pos, w.alt, bytes(w.alt_ids)) for w in iter_variant_windows(bcf, g, window=32)] == ref


def test_headerless_worm_list(shared_data):
    g = Genome(shared_data / "genomes/C.elegans.fa.gz")
    path = shared_data / "genomes/C.elegans.vcf.gz"
    st = VariantStats()
    ws = list(iter_variant_windows(path, g, window=16, skip_ref_mismatch=True, stats=st))
    assert len(ws) == 8703 and st.skipped["ref_mismatch"] == 10
    assert all(w.kind == "SNV" for w in ws)
    with pytest.raises(InputError) as e:
        list(iter_variant_windows(path, g, window=16))
    msg = str(e.value)
    assert msg.startswith(str(path)) and "line" in msg and "REF" in msg


def test_chr_prefix_and_skips(tiny, tmp_path):
    # contig 1: ACGTACGTAC...; pos 3 is G, pos 5 is A
    body = ("chr1\t3\tsnv\tG\tT\t.\t.\t.\n"
            "chr1\t3\tsv\tG\t<DEL>\t.\t.\t.\n"
            "chr1\t3\tbnd\tG\tG[chr2:5[\t.\t.\t.\n"
            "chr1\t3\tstar\tG\t*,C\t.\t.\t.\n"
            "chr1\t3\tgvcf\tG\t<*>\t.\t.\t.\n"
            "chr1\t3\tnone\tG\t.\t.\t.\t.\n"
            "chr2\t39\tedge\tGG\tG\t.\t.\t.\n")
    st = VariantStats()
    ws = list(iter_variant_windows(_vcf(tmp_path, body), tiny, window=10, stats=st))
    assert [(w.id, w.alt) for w in ws] == [("snv", "T"), ("star", "C"), ("edge", "G")]
    assert dict(st.skipped) == {"symbolic": 2, "breakend": 1, "spanning_deletion": 1, "missing_alt": 1}
    assert ws[0].contig == "1" and decode(ws[0].ref_ids) == "NNNACGTACG" and decode(ws[0].alt_ids) == "NNNACTTACG"
    edge = ws[2]  # deletion at the contig end: right flank is N
    assert decode(edge.ref_ids) == "TTTGGGGNNN"  # contig 2 is 40 bp; POS 39 at index 5
    assert decode(edge.alt_ids) == "TTTGGGNNNN" and edge.kind == "DEL" and edge.var_start == 5


def test_ref_mismatch(tiny, tmp_path):
    p = _vcf(tmp_path, "1\t3\trsX\tA\tT\t.\t.\t.\n1\t5\t.\tA\tC\t.\t.\t.\n")
    with pytest.raises(InputError) as e:
        list(iter_variant_windows(p, tiny, window=8))
    msg = str(e.value)
    assert msg.startswith(str(p)) and "1:3" in msg and "'A'" in msg and "'G'" in msg and "ALT T" in msg
    st = VariantStats()
    ws = list(iter_variant_windows(p, tiny, window=8, skip_ref_mismatch=True, stats=st))
    assert len(ws) == 1 and ws[0].pos == 5 and st.skipped["ref_mismatch"] == 1
    # lower-case REF matches case-insensitively
    assert len(list(iter_variant_windows(_vcf(tmp_path, "1\t3\t.\tg\tt\t.\t.\t.\n", "lc.vcf"), tiny, window=8))) == 1


@pytest.mark.parametrize("body,needle", [
    ("chrZ\t3\t.\tG\tT\t.\t.\t.\n", "chrZ"),
    ("1\t3\t.\tG\tT\t.\t.\t.\n1\tabc\t.\tG\tT\t.\t.\t.\n", "line 6"),
    ("1\t3\t.\tG\n", "line 5"),
    ("", "no variant records"),
    ("1\t3\t.\tG!\tT\t.\t.\t.\n", "invalid REF"),
])
def test_bad_vcf(tiny, tmp_path, body, needle):
    p = _vcf(tmp_path, body)
    with pytest.raises(InputError) as e:
        list(iter_variant_windows(p, tiny, window=8))
    assert str(e.value).startswith(str(p)) and needle in str(e.value)


def test_not_a_vcf(tiny, tmp_path):
    (tmp_path / "e.vcf").write_text("")
    with pytest.raises(InputError, match="empty file"):
        list(iter_variant_windows(tmp_path / "e.vcf", tiny))
    (tmp_path / "h.vcf").write_text("1\t3\t.\tG\tT\t.\t.\t.\n")
    with pytest.raises(InputError, match="not a VCF"):
        list(iter_variant_windows(tmp_path / "h.vcf", tiny))
    with pytest.raises(InputError, match="no such file"):
        list(iter_variant_windows(tmp_path / "missing.vcf", tiny))


def test_classify_allele():
    assert classify_allele("A", "G") == "SNV"
    assert classify_allele("AT", "GC") == "MNV"
    assert classify_allele("A", "AT") == "INS"
    assert classify_allele("AT", "A") == "DEL"
    assert classify_allele("ATG", "C") == "COMPLEX"
    assert classify_allele("AAAAC", "CAAAC") == "SNV"
