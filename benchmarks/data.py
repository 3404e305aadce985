"""Data-path throughput: curation and tokenise-and-pack (per core); the last line is one JSON object.

    python benchmarks/data.py [--documents 4000] [--words 300]

Record the figures in benchmarks/RESULTS.md with the machine and its load (`uptime`).
"""

import argparse
import json
import os

from data_curation import measure_curation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=4000, help="documents in the generated corpus")
    parser.add_argument("--words", type=int, default=300, help="words per document")
    args = parser.parse_args()
    result = {"load_average_1m": round(os.getloadavg()[0], 2)}
    result.update(measure_curation(args.documents, args.words))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
