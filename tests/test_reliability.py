"""The battery of issue 24: every malformed input or option is one clean line.

Each case builds a bad input in a temporary folder and runs the real CLI
in-process; every one must exit 2 with exactly one stderr line
``error: <file>: <problem>`` that names the file (and the record or line where
there is one), print no traceback, and leave nothing at the output path. Most
cases fail before any model work; the model cases reuse the session's tiny
model. Usage errors also go through the console script in a subprocess.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENOME = REPO / "data" / "example_genome.fa"  # chrA 160000 bp, chrB 64000 bp
SEQ = "ACGTTGCAAGCTTCGA" * 8  # 128 bp of clean sequence


def _fasta(tmp: Path, text: str, name: str = "g.fa", mode: str = "w") -> Path:
    p = tmp / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def _vcf(tmp: Path, body: str, name: str = "v.vcf") -> Path:
    p = tmp / name
    p.write_text("##fileformat=VCFv4.2\n##contig=<ID=chrA,length=160000>\n"
                 "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + body)
    return p


def _ref_base(pos: int) -> str:
    from mambadna.io.fasta import Genome

    return Genome(GENOME).fetch("chrA", pos - 1, pos)


def _copy_model(model: Path, tmp: Path) -> Path:
    d = tmp / "model"
    shutil.copytree(model, d, ignore=shutil.ignore_patterns("checkpoint-*", "*.png", "metrics.jsonl"))
    return d


def _set_config(d: Path, **kv) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in kv.items():
        if isinstance(cfg.get("model"), dict) and k in cfg["model"]:
            cfg["model"][k] = v
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def _pretrain(tmp, genome, *extra):
    out = tmp / "run"
    return ["pretrain", genome, "--out", out, "--seq-len", 64, "--max-steps", 2, "--d-model", 8, "--n-layers", 1,
            "--no-progress", *extra], out


def _classify(tmp, model, *extra):
    out = tmp / "scores.tsv"
    return ["classify", "--model", model, "--out", out, "--no-progress", *extra], out


def _embed(tmp, model, *extra):
    out = tmp / "emb.npz"
    return ["embed", "--model", model, "--out", out, "--no-progress", *extra], out


def _finetune(tmp, model, *extra):
    out = tmp / "ft"
    return ["finetune", "--model", model, "--out", out, "--max-steps", 1, "--no-progress", *extra], out


# --------------------------------------------------------------------------- the cases
# name -> builder(tmp, model) returning (argv, output path, strings the error line must hold)
def c_fasta_missing(t, m):
    a, o = _pretrain(t, t / "nope.fa")
    return a, o, ["nope.fa", "no such file"]


def c_fasta_empty(t, m):
    a, o = _pretrain(t, _fasta(t, ""))
    return a, o, ["g.fa", "empty file"]


def c_fasta_directory(t, m):
    (t / "dir.fa").mkdir()
    a, o = _pretrain(t, t / "dir.fa")
    return a, o, ["dir.fa", "directory"]


def c_fasta_not_fasta(t, m):
    a, o = _pretrain(t, _fasta(t, "hello world\nthis is text\n"))
    return a, o, ["g.fa", "not a FASTA"]


def c_fasta_fastq_given(t, m):
    a, o = _pretrain(t, _fasta(t, "@r1\nACGT\n+\nIIII\n", "reads.fq"))
    return a, o, ["reads.fq", "not a FASTA"]


def c_fasta_at_hash(t, m):  # passed validation before and killed training at the first window holding it
    a, o = _pretrain(t, _fasta(t, f">c1\n{SEQ}\n{SEQ[:20]}@#{SEQ[22:]}\n>c2\n{SEQ}\n"))
    return a, o, ["g.fa", "line 3", "invalid character '@'", "'c1'"]


def c_fasta_gap_dash(t, m):
    a, o = _pretrain(t, _fasta(t, f">c1\n{SEQ}\n>c2\n{SEQ[:10]}-{SEQ[11:]}\n"))
    return a, o, ["g.fa", "line 4", "'-'", "'c2'"]


def c_fasta_nul_byte(t, m):
    a, o = _pretrain(t, _fasta(t, f">c1\n{SEQ}\n{SEQ[:5]}\0{SEQ[6:]}\n".encode(), mode="wb"))
    return a, o, ["g.fa", "line 3", "invalid character"]


def c_fasta_duplicate_names(t, m):  # htslib keeps the first and warns; we refuse
    a, o = _pretrain(t, _fasta(t, f">c1\n{SEQ}\n>c2\n{SEQ}\n>c1 again\n{SEQ}\n"))
    return a, o, ["g.fa", "line 5", "duplicate record name 'c1'", "line 1"]


def c_fasta_ragged_lines(t, m):
    a, o = _pretrain(t, _fasta(t, f">c1\n{SEQ[:60]}\n{SEQ[:30]}\n{SEQ[:60]}\n"))
    return a, o, ["g.fa", "line 3", "inconsistent line lengths"]


def c_fasta_header_without_name(t, m):
    a, o = _pretrain(t, _fasta(t, f">c1\n{SEQ}\n>\n{SEQ}\n"))
    return a, o, ["g.fa", "line 3", "header without a name"]


def c_fasta_truncated_gzip(t, m):
    blob = gzip.compress((f">c1\n{SEQ * 40}\n").encode())
    a, o = _pretrain(t, _fasta(t, blob[: len(blob) // 2], "g.fa.gz", mode="wb"))
    return a, o, ["g.fa.gz"]


def c_fasta_classify_bad_char(t, m):
    a, o = _classify(t, m, "--fasta", _fasta(t, f">s1\n{SEQ}\n>s2\nACGT*ACGT\n", "seqs.fa"))
    return a, o, ["seqs.fa", "s2", "'*'"]


def c_bam_not_bam(t, m):
    a, o = _embed(t, m, "--bam", _fasta(t, "this is not a BAM\n", "reads.bam"))
    return a, o, ["reads.bam", "not a readable BAM"]


def c_bam_truncated(t, m):
    import pysam

    sam = t / "r.sam"
    sam.write_text("@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:chrA\tLN:160000\n" + "".join(
        f"r{i}\t0\tchrA\t{100 + i}\t60\t32M\t*\t0\t0\t{SEQ[:32]}\t*\n" for i in range(400)))
    bam = t / "r.bam"
    pysam.view("-b", "-o", str(bam), str(sam), catch_stdout=False)
    data = bam.read_bytes()
    bam.write_bytes(data[: len(data) // 2])
    a, o = _embed(t, m, "--bam", bam)
    return a, o, ["r.bam"]


def c_bam_reference_ignored(t, m):
    import pysam

    sam = t / "r.sam"
    sam.write_text("@SQ\tSN:chrA\tLN:160000\n" + f"r1\t0\tchrA\t100\t60\t32M\t*\t0\t0\t{SEQ[:32]}\t*\n")
    bam = t / "r.bam"
    pysam.view("-b", "-o", str(bam), str(sam), catch_stdout=False)
    a, o = _embed(t, m, "--bam", bam, "--reference", GENOME)
    return a, o, ["example_genome.fa", "CRAM input only", "r.bam"]


def c_vcf_beyond_contig(t, m):  # was reported as a REF mismatch against 'N'
    a, o = _classify(t, m, "--vcf", _vcf(t, "chrA\t170000\t.\tA\tG\t.\t.\t.\n"), "--reference", GENOME)
    return a, o, ["v.vcf", "line 4", "POS 170000 is beyond the end of contig chrA (length 160000)"]


def c_vcf_too_few_columns(t, m):
    a, o = _classify(t, m, "--vcf", _vcf(t, "chrA\t100\t.\tA\n"), "--reference", GENOME)
    return a, o, ["v.vcf", "line 4", "malformed"]


def c_vcf_unknown_contig(t, m):
    a, o = _classify(t, m, "--vcf", _vcf(t, "chrZZ\t100\t.\tA\tG\t.\t.\t.\n"), "--reference", GENOME)
    return a, o, ["v.vcf", "chrZZ", "not in the reference"]


def c_vcf_ref_mismatch(t, m):
    wrong = {"A": "C", "C": "G", "G": "T", "T": "A"}.get(_ref_base(500), "A")
    a, o = _classify(t, m, "--vcf", _vcf(t, f"chrA\t500\t.\t{wrong}\tG\t.\t.\t.\n"), "--reference", GENOME)
    return a, o, ["v.vcf", "chrA:500", "does not match"]


def c_vcf_non_integer_pos(t, m):
    a, o = _classify(t, m, "--vcf", _vcf(t, "chrA\tabc\t.\tA\tG\t.\t.\t.\n"), "--reference", GENOME)
    return a, o, ["v.vcf", "line 4"]


def c_vcf_invalid_ref(t, m):
    a, o = _classify(t, m, "--vcf", _vcf(t, "chrA\t100\t.\tX\tG\t.\t.\t.\n"), "--reference", GENOME)
    return a, o, ["v.vcf", "invalid REF allele 'X'"]


def c_vcf_empty(t, m):
    a, o = _embed(t, m, "--vcf", _fasta(t, "", "v.vcf"), "--reference", GENOME)
    return a, o, ["v.vcf", "empty file"]


def c_vcf_no_records(t, m):
    a, o = _classify(t, m, "--vcf", _vcf(t, ""), "--reference", GENOME)
    return a, o, ["v.vcf", "no variant records"]


def c_vcf_not_vcf(t, m):
    a, o = _classify(t, m, "--vcf", _fasta(t, "just some text\nmore\n", "v.vcf"), "--reference", GENOME)
    return a, o, ["v.vcf", "not a VCF"]


def c_vcf_truncated_bgzip(t, m):
    import pysam

    body = "".join(f"chrA\t{p}\t.\t{_ref_base(p)}\tN\t.\t.\t.\n" for p in range(1000, 1400))
    src = _vcf(t, body, "full.vcf")
    gz = t / "v.vcf.gz"
    pysam.tabix_compress(str(src), str(gz))
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) // 2])
    a, o = _classify(t, m, "--vcf", gz, "--reference", GENOME, "--scores", "cosine")
    return a, o, ["v.vcf.gz"]


def c_bcf_garbage(t, m):
    p = t / "v.bcf"
    p.write_bytes(b"BCF\x02\x02" + os.urandom(64))
    a, o = _classify(t, m, "--vcf", p, "--reference", GENOME)
    return a, o, ["v.bcf"]


def c_bed_start_after_end(t, m):
    bed = _fasta(t, "chrA\t100\t200\nchrA\t300\t250\n", "r.bed")
    a, o = _embed(t, m, "--bed", bed, "--reference", GENOME)
    return a, o, ["r.bed", "line 2", "not before end"]


def c_bed_non_integer(t, m):
    bed = _fasta(t, "chrA\t100\t200\nchrA\tten\t250\n", "r.bed")
    a, o = _embed(t, m, "--bed", bed, "--reference", GENOME)
    return a, o, ["r.bed", "line 2", "integers"]


def c_bed_beyond_contig(t, m):
    bed = _fasta(t, "chrB\t63000\t65000\n", "r.bed")
    a, o = _embed(t, m, "--bed", bed, "--reference", GENOME)
    return a, o, ["r.bed", "line 1", "beyond the end"]


def c_bed_unknown_contig(t, m):
    bed = _fasta(t, "chrA\t1\t50\nchrQ\t0\t100\n", "r.bed")
    a, o = _pretrain(t, GENOME, "--regions", bed)
    return a, o, ["r.bed", "line 2", "chrQ"]


def c_bed_too_few_columns(t, m):
    bed = _fasta(t, "chrA\t100\n", "r.bed")
    a, o = _embed(t, m, "--bed", bed, "--reference", GENOME)
    return a, o, ["r.bed", "line 1", "at least 3 columns"]


def c_bed_bad_strand(t, m):
    bed = _fasta(t, "chrA\t100\t200\tx\t0\t*\n", "r.bed")
    a, o = _embed(t, m, "--bed", bed, "--reference", GENOME)
    return a, o, ["r.bed", "line 1", "strand"]


def c_gff_beyond_contig(t, m):
    gff = _fasta(t, "##gff-version 3\nchrA\tsrc\tCDS\t100\t400\t.\t+\t0\tID=a\n"
                    "chrB\tsrc\tCDS\t63900\t64100\t.\t+\t0\tID=b\n", "f.gff3")
    a, o = _finetune(t, m, "--task", "token", "--train", gff, "--reference", GENOME)
    return a, o, ["f.gff3", "line 3"]


def c_gff_too_few_columns(t, m):
    gff = _fasta(t, "##gff-version 3\nchrA\tsrc\tCDS\t100\n", "f.gff3")
    a, o = _finetune(t, m, "--task", "token", "--train", gff, "--reference", GENOME)
    return a, o, ["f.gff3", "line 2"]


def c_csv_one_class(t, m):
    csv = _fasta(t, "sequence,label\n" + "".join(f"{SEQ},a\n" for _ in range(10)), "d.csv")
    a, o = _finetune(t, m, "--train", csv)
    return a, o, ["d.csv", "class"]


def c_csv_wrong_columns(t, m):
    csv = _fasta(t, "seq,y\n" + "".join(f"{SEQ},{i % 2}\n" for i in range(10)), "d.csv")
    a, o = _finetune(t, m, "--train", csv)
    return a, o, ["d.csv", "column"]


def c_csv_bad_sequence(t, m):
    rows = "".join(f"{SEQ},{i % 2}\n" for i in range(10)) + "ACGT#ACGT,1\n"
    csv = _fasta(t, "sequence,label\n" + rows, "d.csv")
    a, o = _finetune(t, m, "--train", csv)
    return a, o, ["d.csv", "line 12", "'#'"]


def c_tsv_empty(t, m):
    a, o = _finetune(t, m, "--train", _fasta(t, "", "d.tsv"))
    return a, o, ["d.tsv", "empty"]


def c_toml_type(t, m):  # was "'<' not supported between instances of 'str' and 'int'"
    toml = _fasta(t, 'seq_len = "abc"\nmax_steps = 2\n', "c.toml")
    a, o = _pretrain(t, GENOME, "--config", toml)
    return a, o, ["c.toml", "'seq_len' must be an integer", "'abc'"]


def c_toml_model_type(t, m):
    toml = _fasta(t, '[model]\nd_model = 8.5\n', "c.toml")
    a, o = _pretrain(t, GENOME, "--config", toml)
    a = [x for x in a if x not in ("--d-model", 8)]
    return a, o, ["c.toml", "[model] option 'd_model' must be an integer"]


def c_toml_unknown_key(t, m):
    toml = _fasta(t, "seq_len = 64\nfoo = 1\n", "c.toml")
    a, o = _pretrain(t, GENOME, "--config", toml)
    return a, o, ["c.toml", "unknown option(s): foo"]


def c_toml_syntax(t, m):
    toml = _fasta(t, "seq_len = = 64\n", "c.toml")
    a, o = _pretrain(t, GENOME, "--config", toml)
    return a, o, ["c.toml", "not valid TOML", "line 1"]


def c_ckpt_truncated(t, m):
    d = _copy_model(m, t)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:200])
    a, o = _embed(t, d, "--fasta", GENOME)
    return a, o, ["model.safetensors", "corrupt"]


def c_ckpt_pickled(t, m):
    import torch

    d = _copy_model(m, t)
    torch.save({"x": torch.zeros(2)}, d / "model.safetensors")
    a, o = _embed(t, d, "--fasta", GENOME)
    return a, o, ["model.safetensors", "pickle", "never unpickles"]


def c_ckpt_mismatched(t, m):  # config/weights size mismatch was a traceback
    d = _copy_model(m, t)
    _set_config(d, d_model=48)
    a, o = _classify(t, d, "--fasta", _fasta(t, f">s\n{SEQ}\n", "s.fa"))
    return a, o, ["model.safetensors", "has shape", "config.json needs", "do not belong together"]


def c_ckpt_newer_version(t, m):
    d = _copy_model(m, t)
    _set_config(d, format_version=99)
    a, o = _embed(t, d, "--fasta", GENOME)
    return a, o, ["config.json", "newer mambadna", "format 99"]


def c_ckpt_nan_weights(t, m):
    import torch
    from safetensors.torch import load_file, save_file

    d = _copy_model(m, t)
    st = load_file(str(d / "model.safetensors"))
    k = sorted(st)[0]
    st[k] = st[k].clone().fill_(float("nan"))
    save_file(st, str(d / "model.safetensors"))
    a, o = _embed(t, d, "--fasta", GENOME)
    return a, o, ["model.safetensors", repr(k), "NaN"]


def c_ckpt_bad_json(t, m):
    d = _copy_model(m, t)
    (d / "config.json").write_text("{not json")
    a, o = _embed(t, d, "--fasta", GENOME)
    return a, o, ["config.json", "not valid JSON"]


def c_ckpt_symlink_outside(t, m):
    d = _copy_model(m, t)
    (d / "model.safetensors").unlink()
    elsewhere = t / "elsewhere.safetensors"
    shutil.copy(m / "model.safetensors", elsewhere)
    (d / "model.safetensors").symlink_to(elsewhere)
    a, o = _embed(t, d, "--fasta", GENOME)
    return a, o, ["model.safetensors", "outside the model folder"]


def c_opt_lr_nan(t, m):
    a, o = _pretrain(t, GENOME, "--lr", "nan")
    return a, o, ["--lr must be a finite number"]


def c_opt_lr_negative(t, m):
    a, o = _pretrain(t, GENOME, "--lr", "-1")
    return a, o, ["--lr must be > 0"]


def c_opt_seq_len_zero(t, m):
    a, o = _pretrain(t, GENOME)
    a[a.index("--seq-len") + 1] = 0
    return a, o, ["--seq-len"]


def c_opt_batch_size_zero(t, m):
    a, o = _pretrain(t, GENOME, "--batch-size", 0)
    return a, o, ["--batch-size"]


def c_opt_val_fraction(t, m):
    a, o = _pretrain(t, GENOME, "--val-fraction", 1.5)
    return a, o, ["--val-fraction must be < 1"]


def c_opt_device(t, m):
    a, o = _pretrain(t, GENOME, "--device", "tpu")
    return a, o, ["--device", "'tpu'"]


def c_opt_window_zero(t, m):
    a, o = _classify(t, m, "--vcf", _vcf(t, "chrA\t100\t.\tA\tG\t.\t.\t.\n"), "--reference", GENOME,
                     "--window", 0)
    return a, o, ["--window must be >= 1"]


def c_out_is_a_file(t, m):
    a, o = _pretrain(t, GENOME)
    o.write_text("my notes\n")
    return a, None, [str(o), "is a file, not a folder"]


def c_out_equals_model(t, m):  # finetune --out --model used to delete the pretrained model
    d = _copy_model(m, t)
    csv = _fasta(t, "sequence,label\n" + "".join(f"{SEQ},{i % 2}\n" for i in range(12)), "d.csv")
    a, _ = _finetune(t, d, "--train", csv)
    a[a.index("--out") + 1] = d
    return a, None, [str(d), "same path as the input"]


def c_out_contains_model(t, m):
    d = _copy_model(m, t)
    csv = _fasta(t, "sequence,label\n" + "".join(f"{SEQ},{i % 2}\n" for i in range(12)), "d.csv")
    a, _ = _finetune(t, d, "--train", csv)
    a[a.index("--out") + 1] = t
    return a, None, [str(t), "contains the input"]


def c_out_foreign_dir(t, m):  # finetune --out an existing folder deleted it and everything in it
    csv = _fasta(t, "sequence,label\n" + "".join(f"{SEQ},{i % 2}\n" for i in range(12)), "d.csv")
    a, o = _finetune(t, m, "--train", csv)
    o.mkdir()
    (o / "thesis.tex").write_text("years of work\n")
    return a, None, [str(o), "not an earlier output of `mambadna finetune`", "--overwrite"]


def c_out_dir_for_file(t, m):
    a, o = _classify(t, m, "--fasta", _fasta(t, f">s\n{SEQ}\n", "s.fa"))
    o.mkdir()
    return a, None, [str(o), "existing folder"]


def c_out_foreign_file(t, m):
    a, o = _embed(t, m, "--fasta", _fasta(t, f">s\n{SEQ}\n", "s.fa"))
    o.write_bytes(b"PK\x03\x04 someone else's archive")
    return a, None, [str(o), "already exists", "--overwrite"]


def c_out_equals_input(t, m):
    fa = _fasta(t, f">s\n{SEQ}\n", "s.fa")
    a, _ = _classify(t, m, "--fasta", fa)
    a[a.index("--out") + 1] = fa
    return a, None, ["s.fa", "same path as the input"]


def c_out_locked_by_live_process(t, m):
    a, o = _classify(t, m, "--fasta", _fasta(t, f">s\n{SEQ}\n", "s.fa"))
    (t / ".scores.tsv.lock").write_text(json.dumps({"pid": 1, "host": os.uname().nodename, "command": "classify"}))
    return a, o, [str(o), "in use by pid 1", "lock file"]


def c_pretrain_into_other_run(t, m):  # a fresh run pruned the old run's checkpoints and mixed the two
    a, o = _pretrain(t, GENOME)
    (o / "checkpoint-0000120").mkdir(parents=True)
    (o / "checkpoint-0000120" / "config.json").write_text("{}")
    return a, None, [str(o), "checkpoint-0000120", "--resume", "--overwrite"]


def c_pretrain_into_foreign_dir(t, m):
    a, o = _pretrain(t, GENOME)
    o.mkdir()
    (o / "data.csv").write_text("x\n")
    return a, None, [str(o), "not a pretraining run's folder", "data.csv"]


def c_resume_other_config(t, m):
    a, o = _pretrain(t, GENOME)
    shutil.copytree(m, o)  # the session model: seq_len 128, d_model 32
    a += ["--resume", "--d-model", 32, "--n-layers", 2, "--d-state", 8]
    return a, None, ["checkpoint-", "another configuration", "seq_len"]


CASES = {name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("c_")}


def test_battery_is_large_enough():
    assert len(CASES) >= 40, len(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clean_line(case, tmp_path, run_cli, tiny_model_dir):
    if case == "ckpt_symlink_outside" and not hasattr(os, "symlink"):
        pytest.skip("no symlinks")
    argv, out, needles = CASES[case](tmp_path, tiny_model_dir)
    before = None if out is not None else sorted(str(p) for p in tmp_path.rglob("*"))
    locks = sorted(tmp_path.rglob(".*.lock"))  # another run's lock stays; ours must go
    code, stdout, err = run_cli(argv)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    if out is not None:
        assert not out.exists(), f"{out} left behind"
    else:  # the existing output was not touched, and no new file appeared
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert sorted(tmp_path.rglob(".*.lock")) == locks, "lock file left behind"


# --------------------------------------------------------------------------- usage errors, real console script
def _console(*args, timeout=120):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "mambadna.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("args,needle", [
    (["pretrain", GENOME, "--seq-len", "abc"], "Invalid value for '--seq-len'"),
    (["nosuchcmd"], "No such command"),
    (["classify", "--out", "x.tsv"], "Missing option"),
    (["embed", "--model", "m", "--out", "x.npz", "--no-such-option"], "No such option"),
    (["pretrain", GENOME, "--lr", "fast"], "Invalid value for '--lr'"),
])
def test_usage_errors_through_the_console_script(args, needle, tmp_path):
    r = _console(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and needle in r.stderr and "Usage:" in r.stderr, r.stderr


def test_bad_value_through_the_console_script_is_one_line(tmp_path):
    out = tmp_path / "o"
    r = _console("pretrain", GENOME, "--out", out, "--lr", "nan")
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and lines == ["error: --lr must be a finite number, got nan"], r.stderr
    assert not out.exists()


def test_help_keeps_bracketed_defaults_and_states_strictness():
    r = _console("pretrain", "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0
    assert "[runs/pretrain]" in text and "[500]" in text  # Rich markup used to eat "[...]"
    assert "IUPAC" in text and "CRLF" in text and "soft-masked" in text


# --------------------------------------------------------------------------- inputs that used to crash, now read
def test_bgzip_fasta_with_stale_fai_is_reindexed(tmp_path, caplog):
    """A .fai left from an earlier version of the file (newer mtime, other content) was
    trusted and failed mid-training with a ValueError; it is now detected and rebuilt."""
    import logging

    import pysam

    from mambadna.io.fasta import Genome

    old, new = tmp_path / "old.fa", tmp_path / "g.fa"
    old.write_text(f">c1 a long description that shifts every offset\n{SEQ}\n>c2\n{SEQ[:40]}\n")
    new.write_text(f">c1\n{SEQ[::-1]}\n{SEQ}\n>c2\n{SEQ}\n>c3\n{SEQ[:64]}\n")
    pysam.tabix_compress(str(old), str(tmp_path / "old.fa.gz"))
    pysam.faidx(str(tmp_path / "old.fa.gz"))
    pysam.tabix_compress(str(new), str(tmp_path / "g.fa.gz"))
    for ext in (".fai", ".gzi"):  # the stale index, newer than the FASTA
        shutil.copy(tmp_path / f"old.fa.gz{ext}", tmp_path / f"g.fa.gz{ext}")
    with caplog.at_level(logging.WARNING, logger="mambadna"):
        g = Genome(tmp_path / "g.fa.gz")
    assert any("stale index" in r.getMessage() for r in caplog.records)
    assert g.lengths == {"c1": 256, "c2": 128, "c3": 64}
    assert g.fetch("c1", 120, 136) == (SEQ[::-1] + SEQ)[120:136] and g.fetch("c3", 0, 64) == SEQ[:64]


def test_plain_gzip_vcf_with_header_is_read(tmp_path):
    """Plain gzip (not bgzip) .vcf.gz with a header raised NotImplementedError (seek)."""
    from mambadna.io.fasta import Genome
    from mambadna.io.vcf import iter_variant_windows

    body = "".join(f"chrA\t{p}\t.\t{_ref_base(p)}\tN\t.\t.\t.\n" for p in (100, 200, 300))
    src = _vcf(tmp_path, body)
    gz = tmp_path / "v.vcf.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    got = [(w.contig, w.pos) for w in iter_variant_windows(gz, Genome(GENOME), window=16)]
    assert got == [("chrA", 100), ("chrA", 200), ("chrA", 300)]
