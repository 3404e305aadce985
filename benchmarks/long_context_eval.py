"""Read a long-context checkpoint at other lengths and RoPE scalings: MQAR accuracy side by side.

    python benchmarks/long_context_eval.py --ckpt_path runs/long-context/.../last.ckpt \
        [--recipes recipes/long-context.yaml] [--factor 2]

Runs ``constellation-kit validate`` in-process on the same checkpoint: at the trained length without
scaling, then at ``factor`` x the trained length without scaling and with each context-extension
scaling (YaRN first) of the global layers' RoPE, ``original_max_position`` = the trained length.
RoPE tables are not checkpointed (they derive from the config), so one checkpoint serves every
scaling. Prints a table; the last line is one JSON object ``{"<length>/<scaling>": accuracy}``.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ATTENTION = "--model.init_args.network.init_args.attention.init_args"


def validate(recipes: list[str], ckpt: str, seq_len: int, trained: int, kind: str, factor: float) -> dict:
    from constellation_kit.cli import ConstellationCLI

    args = ["validate", *[f"--config={r}" for r in recipes], f"--ckpt_path={ckpt}",
            f"--data.init_args.val_seq_len={seq_len}", f"{ATTENTION}.rope_scaling.kind={kind}",
            f"{ATTENTION}.rope_scaling.factor={factor}", f"{ATTENTION}.rope_scaling.original_max_position={trained}",
            "--trainer.limit_val_batches=null"]
    cli = ConstellationCLI(args=args)
    metrics = cli.trainer.callback_metrics
    return {"accuracy": round(float(metrics["val/accuracy"]), 4), "loss": round(float(metrics["val/loss"]), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, type=Path)
    parser.add_argument("--recipes", nargs="+",
                        default=[str(REPO / "recipes" / "long-context.yaml")])
    parser.add_argument("--trained_len", type=int, default=128, help="data.seq_len the checkpoint was trained at")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--scalings", nargs="+", default=["yarn", "ntk", "linear"])
    args = parser.parse_args()
    ckpt = str(args.ckpt_path.resolve())
    long_len = int(args.trained_len * args.factor)
    points = [(args.trained_len, "none", 1.0), (long_len, "none", 1.0)] + [(long_len, s, args.factor) for s in args.scalings]
    results = {}
    os.chdir(tempfile.mkdtemp(prefix="long-context-eval-"))  # validate's MLflow runs land here, not in the repo
    for seq_len, kind, factor in points:
        results[f"{seq_len}/{kind}"] = validate(args.recipes, ckpt, seq_len, args.trained_len, kind, factor)
    print(f"\n{'length':>7s} {'rope scaling':>14s} {'MQAR accuracy':>14s} {'val/loss':>9s}")
    for key, r in results.items():
        seq_len, kind = key.split("/")
        print(f"{seq_len:>7s} {kind:>14s} {r['accuracy']:14.4f} {r['loss']:9.4f}")
    print(json.dumps({key: r["accuracy"] for key, r in results.items()}))


if __name__ == "__main__":
    main()
