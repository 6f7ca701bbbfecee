"""Molecule data: blood-brain-barrier permeability of 7,807 compounds (B3DB, pip qc-b3db), SMILES -> BBB+ / BBB-."""

from __future__ import annotations

import csv

from peftlab.study.data.assets import asset_file
from peftlab.study.data.examples import Labeled, LabeledData

BBB_LABELS = ["BBB-", "BBB+"]


def bbb_permeability() -> LabeledData:
    """B3DB's classification set (Meng et al., Sci. Data 2021): each compound's SMILES and whether it crosses the
    blood-brain barrier; rows without a SMILES or with another label are skipped."""
    path = asset_file("B3DB", "B3DB_classification.tsv", "qc-b3db --no-deps")
    index = {name: i for i, name in enumerate(BBB_LABELS)}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return LabeledData([Labeled(r["SMILES"].strip(), index[r["BBB+/BBB-"]]) for r in rows
                        if r.get("BBB+/BBB-") in index and (r.get("SMILES") or "").strip()], BBB_LABELS)
