"""idistill-sync: deliver to MLflow what runs journaled while it was unreachable.

idistill-sync outputs/multi30k/2026-11-30/09-15-00.123456    # one run (its checkpoints/)
idistill-sync multirun/ --uri http://127.0.0.1:5000          # every run under a folder
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="idistill-sync", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories (searched below)")
    parser.add_argument(
        "--uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="tracking store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db, as a run)",
    )
    args = parser.parse_args(argv)
    from idistill.tracking import journals, sync

    folders = [f for p in args.paths for f in journals(p)]
    if not folders:
        print(f"idistill-sync: no tracking journal under {' '.join(map(str, args.paths))}")
        return 1
    failed = 0
    for folder in folders:
        try:
            sent, run_id = sync(folder, args.uri)
        except Exception as e:
            failed += 1
            print(f"{folder}: not delivered ({type(e).__name__}: {str(e)[:200]})")
            continue
        print(f"{folder}: {sent} events delivered to run {run_id}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
