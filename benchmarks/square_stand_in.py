"""Square on its stand-in vs Square on the artefact: the same images, per variant, side by side.

    .venv/bin/python benchmarks/square_stand_in.py results/<run with the stand-in> results/<run --square-on-device>

Why: ``bench`` lets a stand-in (the bit-exact twin, the float model) answer Square's queries and the artefact
judge the results (README: *Robust accuracy*). This checks the claim that it changes nothing on a real run:
for every variant present in both runs, it pairs the per-image outcomes (``per_image/<tag>.csv``) of Square
(cumulative, after the white-box members) and of the final robust figure, counts the images that differ, and
runs McNemar's exact test on them; "identical" when no image differs, else "not distinguishable" unless p < 0.05.
Prints a table and writes ``square_stand_in.csv`` (atomically) into the first run folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def compare(stand_in: Path, literal: Path) -> pd.DataFrame:
    from laaq.stats import paired_test

    def rows(run: Path) -> dict[str, dict]:
        return {r["variant"]: r for r in pd.read_csv(run / "metrics.csv", dtype=str, keep_default_na=False)
                .to_dict("records")}

    a_rows, b_rows = rows(stand_in), rows(literal)
    out = []
    for variant in a_rows:
        if variant not in b_rows:
            continue
        tag = f"{a_rows[variant]['target']}-{variant}"
        a = pd.read_csv(stand_in / "per_image" / f"{tag}.csv")
        b = pd.read_csv(literal / "per_image" / f"{tag}.csv")
        if len(a) != len(b) or not (a["label"].values == b["label"].values).all():
            raise SystemExit(f"{variant}: the two runs did not evaluate the same images")
        for col in ("square", "robust"):
            t = paired_test(a[col].values.astype(bool), b[col].values.astype(bool))
            verdict = ("identical" if t.only_a == t.only_b == 0 else
                       "DIFFERENT (p < 0.05)" if t.p_value < 0.05 else "not distinguishable")
            out.append({"variant": variant, "outcome": col, "n": t.n, "acc_stand_in": round(a[col].mean(), 4),
                        "acc_on_artefact": round(b[col].mean(), 4), "only_stand_in_robust": t.only_a,
                        "only_artefact_robust": t.only_b, "mcnemar_p": round(t.p_value, 4), "verdict": verdict,
                        "square_on": a_rows[variant].get("square_on", "")})
    return pd.DataFrame(out)


def main(a: argparse.Namespace) -> int:
    from harness.results import atomic_write_text

    stand_in, literal = Path(a.stand_in), Path(a.literal)
    for run in (stand_in, literal):
        if not (run / "metrics.csv").exists():
            print(f"{run}: no metrics.csv (not a finished bench run folder)", file=sys.stderr)
            return 2
    info = json.loads((literal / "run.json").read_text())
    if info["config"].get("square_on") != "artefact":
        print(f"warning: {literal} was not run with --square-on artefact (--square-on-device)", file=sys.stderr)
    df = compare(stand_in, literal)
    print(df.drop(columns=["square_on"]).to_string(index=False))
    atomic_write_text(stand_in / "square_stand_in.csv", df.to_csv(index=False))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stand_in", help="run folder made by a default bench (Square on its stand-in)")
    ap.add_argument("literal", help="the same configuration with --square-on-device")
    sys.exit(main(ap.parse_args()))
