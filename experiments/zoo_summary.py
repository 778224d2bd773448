"""The zoo on CPU in one table, merged from the records that measured it.

Every column comes from a committed record under ``experiments/results/``,
named with its commit in the table's caption:

- ``bench_zoo.json`` (``python -m experiments.bench_zoo``): the fused step
  at M = 8 against a user's hand loop and an expert's ``jax.vmap``;
- ``first_step.json`` (``python -m experiments.first_step``): a fresh
  process to its first trained step, fused against the loop, and what the
  persistent compilation cache leaves of the time after imports;
- ``bench_zoo_many.json`` (``python -m experiments.bench_zoo --ms
  32,64,128 ...``): the fused step, and what ``pt_train`` runs between
  exchanges (a segment of steps, per step), at many replicas.

Nothing is measured here: the table is rebuilt from those files and written
to ``--out-dir`` (default ``$TEMPERING_RESULTS_DIR``, else
``./tempering-results``, as every script). Refresh the committed table with
``python -m experiments.zoo_summary --out-dir experiments/results``, then
``python -m experiments.update_readme``; ``tests/test_zoo_summary.py`` checks
that the committed table is what the records give.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from experiments.common import RESULTS_DIR, short_commit, warn_dirty
from experiments.update_readme import RECORDS_DIR

SOURCES = ("bench_zoo", "first_step", "bench_zoo_many")
NAME = "zoo_summary"


def _load(records_dir: Path) -> dict[str, dict]:
    return {n: json.loads((records_dir / f"{n}.json").read_text()) for n in SOURCES}


def _quartiles(q: dict | None) -> str:
    return f" [{q['q25']:.2f}, {q['q75']:.2f}]" if q else ""


def _first_step_cell(runs: dict) -> str:
    """Median [quartiles] of the per-repeat ratios loop / fused of the first step."""
    ratios = [
        loop["first_step_s"] / fused["first_step_s"]
        for loop, fused in zip(runs["loop"], runs["fused"], strict=True)
    ]
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    return f"{q50:.2f} [{q25:.2f}, {q75:.2f}]"


def _source_line(name: str, record: dict) -> str:
    p = record["provenance"]
    m = p["machine"]
    isa = f", {m['cpu_isa']}" if m.get("cpu_isa") else ""
    return (
        f"`{name}` at {short_commit(p['git_commit'])} ({m['cpu']}{isa}, "
        f"{m['cpu_count']} "
        f"cores, jax {m['jax']})"
    )


def markdown(records: dict[str, dict]) -> str:
    """The merged table and its caption."""
    zoo, first, many = (records[n] for n in SOURCES)
    first_rows = {r["model"]: r for r in first["rows"] if r["M"] == 8}
    many_ms = sorted({r["M"] for r in many["rows"]})
    many_rows = {(r["model"], r["M"]): r for r in many["rows"]}
    lines = [
        "CPU, batch 128, one SGD step (momentum 0.9) of M replicas; ratios > 1: "
        "the library is faster, medians of interleaved repeats [quartiles of "
        "the per-repeat ratios]. loop / fused: a user's Python loop over M "
        'jitted flax + optax steps against `train_step(vectorize="auto")`; hand '
        "vmap / fused: an expert's jitted `jax.vmap` of the same step against the "
        "library; memory: XLA's compiled peak of the fused step against M times "
        "the user's single step; first step loop / fused: fresh processes, from the start to "
        "the first step's result (imports, building the replicas, compiling, "
        "the step), the median and quartiles of the per-repeat ratios; cache "
        "warm / cold: the time after imports with JAX's "
        "persistent cache read back over the time with it compiled and written "
        "(< 1: the cache saves; `tempering.enable_compilation_cache`); at M = "
        + ", ".join(str(m) for m in many_ms)
        + ": loop / fused one step (loop / a segment of "
        f"{many['segment_steps']} steps as `pt_train` runs, per step). Records: "
        + "; ".join(_source_line(n, records[n]) for n in SOURCES)
        + ".",
        "",
        "| model | loop / fused, M = 8 | hand vmap / fused | memory ÷ (M × one) "
        "| first step loop / fused | cache warm / cold (after imports) | "
        + " | ".join(f"M = {m}" for m in many_ms)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(many_ms),
    ]
    for row in zoo["rows"]:
        if row["M"] != 8:
            continue
        model = row["model"]
        cells = [
            model,
            f"{row['loop_vs']['fused']:.2f}"
            + _quartiles(row["loop_vs_paired"].get("fused")),
            f"{row['hand_vmap_vs_fused']:.2f}"
            if row.get("hand_vmap_vs_fused")
            else "–",
        ]
        memory = row.get("memory_vs_m_times_one", {}).get("fused")
        cells.append(f"{memory:.2f}" if memory else "–")
        f = first_rows.get(model)
        if f is None:
            cells += ["–", "–"]
        else:
            cells.append(_first_step_cell(f["runs"]))
            after = f["paired"].get("warm/cold after imports")
            cells.append(f"{after['median']:.2f}" if after else "–")
        for m in many_ms:
            r = many_rows.get((model, m))
            if r is None:
                cells.append("–")
                continue
            segment = r["loop_vs"].get("segment")
            cells.append(
                f"{r['loop_vs']['fused']:.2f}"
                + (f" ({segment:.2f})" if segment is not None else "")
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--records-dir", type=Path, default=RECORDS_DIR,
        help="where the records are read (default: the committed experiments/results)",
    )  # fmt: skip
    parser.add_argument(
        "--out-dir", "--out", dest="out_dir", type=Path, default=RESULTS_DIR,
        help=f"where {NAME}.md goes (default: $TEMPERING_RESULTS_DIR, else "
        "./tempering-results; experiments/results to refresh the committed table)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    records = _load(args.records_dir)
    warn_dirty([r["provenance"]["git_commit"] for r in records.values()], f"{NAME}.md")
    text = markdown(records)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{NAME}.md"
    path.write_text(text)
    print(text)
    print(f"wrote {path}")
    return text


if __name__ == "__main__":
    main()
