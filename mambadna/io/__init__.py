"""File formats: FASTA, BED, BAM, VCF, labeled sets; atomic outputs and input checks."""
